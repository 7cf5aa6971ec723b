"""Clusters: the same jobs on SLURM (through submitit), on the local machine, or in this process."""
