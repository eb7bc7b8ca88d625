"""The flow tracker's insides; its public face is ``vision.propagate``.

- ``chain``: one keyframe's mask carried frame by frame (the numbered steps);
- ``search``: finding the object again after it left the frame;
- ``geometry``: affine maps and fits, pixel grids, mask morphology;
- ``measure``: where flow can be trusted, photometric error, template matching;
- ``params``: every tuning constant, with what it does.
"""
