"""``python -m srdistill.assets NAME`` prints the path of a built-in file (for shell scripts).

Names: teacher, train, val, sample, default-model, default-onnx.
"""

import sys

from . import BUNDLED_TEACHER, DEFAULT_MODEL, DEFAULT_MODEL_ONNX, SAMPLE_IMAGE, TRAIN_IMAGES, VAL_IMAGES

NAMES = {"teacher": BUNDLED_TEACHER, "train": TRAIN_IMAGES, "val": VAL_IMAGES, "sample": SAMPLE_IMAGE,
         "default-model": DEFAULT_MODEL, "default-onnx": DEFAULT_MODEL_ONNX}

if len(sys.argv) != 2 or sys.argv[1] not in NAMES:
    print(f"usage: python -m srdistill.assets {{{'|'.join(NAMES)}}}", file=sys.stderr)
    sys.exit(2)
print(NAMES[sys.argv[1]])
