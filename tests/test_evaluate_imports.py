"""`mtl evaluate` stands on its own: it loads saved models without the training code."""

from __future__ import annotations

import os
import subprocess
import sys

from test_infer_support import tiny_model_path  # noqa: F401 - fixture


def test_evaluation_loads_a_saved_model_without_importing_training(tiny_model_path):  # noqa: F811
    """In a fresh process (the test session has imported everything already): the evaluation
    module registers the model class that .keras files name, and never imports mtl.train."""
    code = ("import sys, keras; import mtl.evaluate.evaluation; "
            "m = keras.models.load_model(sys.argv[1]); print(type(m).__name__); "
            "print('mtl.train' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "SM_FRAMEWORK": "tf.keras"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["MultiTaskModel", "False"]
