"""The commands the launcher knows: how each reads its config and what each task runs."""
from __future__ import annotations


from launch.submit import Entry


def _pretrain_config(argv):
    from pretrain.config import load_pretrain_config

    return load_pretrain_config(argv)


def _pretrain_run_dir(cfg):
    from pretrain.train import resolve_run_dir

    return resolve_run_dir(cfg)


def _pretrain_prepare(cfg):
    from pretrain.train import resolve_data, resolve_val

    resolve_val(cfg)  # a plateau schedule without validation data is refused before anything is queued
    resolve_data(cfg)  # builds the synthetic corpus on the submitting machine, once, when no data is given


PRETRAIN = Entry("launch/pretrain.py", _pretrain_config, _pretrain_run_dir, "pretrain.train:run", _pretrain_prepare)


def _finetune_config(argv):
    from finetune.config import load_finetune_config

    return load_finetune_config(argv)


def _finetune_run_dir(cfg):
    from finetune.config import resolve_run_dir

    return resolve_run_dir(cfg)


def _finetune_prepare(cfg):
    from finetune.train import resolve_data

    resolve_data(cfg)  # checks the data (and builds the synthetic corpus) before anything is queued


FINETUNE = Entry("finetune/layerwise.py", _finetune_config, _finetune_run_dir, "finetune.train:run", _finetune_prepare)


def _semisup_config(argv):
    from finetune.semisup import load_semisup_config

    return load_semisup_config(argv)


def _semisup_run_dir(cfg):
    from finetune.semisup import resolve_semisup_dir

    return resolve_semisup_dir(cfg)


PSEUDOLABEL = Entry("finetune/pseudolabel.py", _semisup_config, _semisup_run_dir, "finetune.semisup:run",
                    _finetune_prepare)
