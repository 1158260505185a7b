"""Training: the fit loop (`train`), one `Trainer` per model kind (`trainers`), the comparison run (`run`), CoLES
pretraining (`pretrain`), named presets (`presets`), the report, DDP, and what a model carries for scoring
(`scoring_card`). Training may import `pipeline.scoring`; scoring never imports training."""
