"""Files shipped inside the package: sample images and the default model."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
TRAIN_IMAGES = ASSETS / "images" / "train"
VAL_IMAGES = ASSETS / "images" / "val"
SAMPLE_IMAGE = ASSETS / "images" / "sample.png"
DEFAULT_MODEL = ASSETS / "models" / "default_x4.safetensors"
DEFAULT_MODEL_ONNX = ASSETS / "models" / "default_x4.onnx"
BUNDLED_TEACHER = ASSETS / "models" / "teacher_dctlsa_x4.safetensors"
