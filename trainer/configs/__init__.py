"""The typed config dataclasses of the job and its components, in modules that import no torch (only the standard
library, PyYAML and each other; tests/unit/test_layering.py): a config file and its overrides are checked, and
``cmg train --help`` lists every key, in a fraction of a second, before anything imports torch.

    job        JobConfig and its run / optim sections; the sections below nest in it
    model      each task's ``model`` section (UniCodeConfig, FCCIDConfig, COMETConfig and their parts),
               the ModelConfig protocol the job's checks use, and TASK_CONFIGS (task name -> config class)
    data       DataConfig, DecodeConfig
    backbones  BackbonesConfig (a backbones YAML file)
    eval       the probe during pretraining (TrainingProbeConfig), heads, probes, TOC, evaluation sources
    tracking   TrackingConfig (MLflow)

The loader (defaults <- YAML <- overrides, every error at once, relative paths) is trainer/configs/load.py.
"""
