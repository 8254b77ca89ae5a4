"""Train a small GPT with emulated low-precision GEMMs (``floatlab train``, ``python -m floatlab.train``)."""

from floatlab.train.data import Corpus
from floatlab.train.experiment import run_experiment
from floatlab.train.loop import RunResult, train_run
from floatlab.train.model import GPT, GPTConfig
from floatlab.train.presets import PRESETS, Preset, get_preset

__all__ = ["Corpus", "GPT", "GPTConfig", "PRESETS", "Preset", "RunResult", "get_preset",
           "run_experiment", "train_run"]
