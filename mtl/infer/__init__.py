"""``mtl infer``: a trained model on new scans -> findings, masks in the input's geometry, pictures.

Modules: :mod:`~mtl.infer.discovery` (files and folders -> input items),
:mod:`~mtl.infer.formats` (one reader/writer class per file format: image, NIfTI, NRRD, DICOM),
:mod:`~mtl.infer.case` (input items and cases), :mod:`~mtl.infer.axes` (slicing axis),
:mod:`~mtl.infer.channels` (named MR sequences stacked into channels),
:mod:`~mtl.infer.readers` (an item -> an upright case), :mod:`~mtl.infer.predict` (the model
over a case's slices), :mod:`~mtl.infer.findings` (numbers per case), :mod:`~mtl.infer.core`
(one case: read, predict, findings record, mask bytes, overlay text; shared with ``mtl serve``),
:mod:`~mtl.infer.writers` (atomic files, CSV, masks to a path), :mod:`~mtl.infer.overlay`
(pictures), :mod:`~mtl.infer.gradcam` (Grad-CAM of the type head), :mod:`~mtl.infer.runner`
(one run: every input, its case folder, findings.csv) and :mod:`~mtl.infer.command` (the
``infer`` click command).
"""
