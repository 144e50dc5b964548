"""``mtl infer``: a trained model on new scans -> findings, masks in the input's geometry, pictures.

Modules: :mod:`~mtl.infer.readers` (inputs -> cases), :mod:`~mtl.infer.predict` (the model over a
case's slices), :mod:`~mtl.infer.findings` (numbers per case), :mod:`~mtl.infer.writers` (PNG,
NIfTI, DICOM SEG, JSON, CSV; atomic), :mod:`~mtl.infer.overlay` (pictures),
:mod:`~mtl.infer.gradcam` (Grad-CAM of the type head), :mod:`~mtl.infer.runner` (one run) and
:mod:`~mtl.infer.command` (the ``infer`` click command).
"""
