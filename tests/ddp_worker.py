"""Run under torchrun by test_training.py: train briefly, then save this rank's weights."""

import sys
from pathlib import Path

import torch

from toolkit.data import load_dataset
from toolkit.training import Trainer, make_config

data, out = Path(sys.argv[1]), Path(sys.argv[2])
config = make_config("baseline-cnn", epochs=2, val_size=50, batch_size=16, device="cpu")
trainer = Trainer(config, load_dataset(data), out / "run")
trainer.run()
torch.save(trainer.model.state_dict(), out / f"rank{trainer.world.rank}.pt")
