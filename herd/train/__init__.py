"""herd.train: one trainer for pretraining and codistillation (and later SFT / RL / DPO) on Ray Train.

    config.py       PretrainConfig / DistillConfig sections (+ Optim / Schedule / Checkpoint / Workers / Alpha)
    loop.py         the one training loop (accumulation, clipping, autocast, MoE balancing, metrics, state)
    losses.py       objectives: masked CE; codistillation alpha*T^2*KL + (1-alpha)*CE with the alpha controller
    optim.py        AdamW with MetaP param groups; warmup -> cosine / WSD
    parallel.py     DDP / FSDP2 applied from outside the model; full state dicts for checkpoints
    checkpoint.py   per-rank checkpoint files with a completion marker; partial or foreign ones are refused
    ray_trainer.py  TorchTrainer wiring: FailureConfig, deliberate resume, live metrics relay to the driver
    api.py          train_and_export: train on Ray Train, save_hf + plots; plain paths and callbacks (no StepContext)
    metrics.py      expert load / router entropy, measured matmul peak for MFU
    plots.py        loss curve and expert-load PNGs
"""
