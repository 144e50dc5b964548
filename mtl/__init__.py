"""mtl: one network that says whether a brain MRI slice holds a tumor, which kind, and where."""

from mtl.kernels import prefer_onednn

__version__ = "0.1.0"

# before anything imports TensorFlow, which reads the choice once (mtl.kernels)
prefer_onednn()
