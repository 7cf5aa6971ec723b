"""The runtime every job runs on: one step loop, one engine owner, one checkpoint owner, one logging path.

    config       the runtime's config groups (optim, deepspeed, checkpoint, log) and the layered merge of any tree
    distributed  where this process sits in the job (torchrun -> submitit -> single) and the collectives we use
    engine       the only module that imports DeepSpeed: engine build, LR schedule, ZeRO-3 gathering, consolidation
    checkpoints  every file format we write: run checkpoints (COMPLETE, latest, stream position), encoder.pt, best.pt
    run_folder   the run folder: one run at a time (a lock), the same config on every rerun, a fresh start on request
    tracking     sinks every record goes to once: metrics.jsonl, TensorBoard, Weights & Biases
    loop         ``run(task, cfg)``: the step loop; pretraining and fine-tuning are tasks plugged into it

Nothing here imports a task package (pretrain, finetune): tasks import the runtime, never the other way round.
"""
