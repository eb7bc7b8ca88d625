"""Every tuning constant of the flow tracker, with what it does, in one place.

``benchmarks/tracking.py`` measures the effect of a change (DAVIS J&F and fps on clips
with exact ground truth); run it before and after touching any of these.
"""

from __future__ import annotations

import cv2

# Working resolution and window.
WORK_SIDE = 480  # longest side of the working resolution (px)
MARGIN = 0.3  # the window reaches this share of the object's size beyond it (plus its motion)
MIN_MARGIN = 24  # px, at least
REVERSE = 0.5  # ... and this share of its last motion backwards (a bounce reverses it)
# Optical flow (OpenCV DIS).
FINE_PIXELS = 60_000  # windows up to this many pixels get flow at full working resolution
GD_ITERS = 12  # DIS gradient-descent iterations per patch
VAR_ITERS = 0  # DIS variational refinement iterations (costly at full resolution, no gain)
BWD_COARSER = 1  # the backward flow's finest DIS scale is this many octaves coarser
MIN_FLOW_SIDE = 16  # DIS needs a few 8-px patches per side
# The object's motion.
EDGE = 5.0  # px band (doubled for coarser flow) inside the edge where DIS mixes both motions
DEEP = 10.0  # px from the edge beyond which a pixel's flow counts fully
SIGMA = 4.0  # px, reach of the smoothing of the motion the affine model misses
TEX = 400.0  # structure-tensor eigenvalue (Sobel units^2) at which flow is half trusted
ROBUST_PX = 1.0  # flow residual (px) at which a pixel's say in the affine fit halves
MAX_SCALE_STEP = 1.06  # most a fitted motion may stretch or shrink the object in one frame
TRUST = 0.3  # share of the recent best flow support below which the last motion is blended in
# Template translation (flat-coloured objects, jumps).
SWITCH = 0.8  # it replaces the flow's motion when its error is this much lower
TEMPLATE_PIXELS = 1600  # its coarse search runs on templates downscaled to this size
# Occlusion.
OCC_PX = 1.5  # backward flow this far (+15 % of the motion) off the object's is something else
OCC_TEX = 0.1  # texture confidence (see measure.texture) needed to call a pixel occluded
OCC_ZONE = 14  # px around an occluder where flow is not used for the object's motion
OCC_OUT = 3  # px the occluder is grown by when cut from the visible mask
# Drift control.
ECC_MIN = 0.55  # correlation with the keyframe's appearance below which ECC is not believed
ECC_SHIFT = 0.2  # ECC's result is refused if it moves the object more than this x its size
ECC_STRETCH = 1.1  # ... or scales it by more than this in one frame
TEXTURED = 0.05  # mean texture confidence over the keyframe object below which ECC is not tried
ECC_GAIN = 0.7  # share of ECC's correction applied per frame (damps noise, keeps up with drift)
RELAX = 0.3  # share of the non-rigid part given up in a frame where it does not help
ANCHOR = 1.3  # a flat object re-anchors to its keyframe when that fits at most this much worse
# Appearance-aware refinement (refine.py): log-odds of a pixel near the edge being object.
# On by default: without it a mask never grows into what the keyframe did not show (a mouth
# opening, a person standing up). Its ~1% edge wobble on rigid objects is kept away from the
# classical separator by model.attribution.SIZE_NOISE.
REFINE = True  # refine each chain's mask by colour and motion (propagate's default)
REF_MIN_AREA = 40  # px at the working resolution: smaller masks are left as the chain has them
REF_BAND = 0.08  # the band re-decided reaches this x the object's size (sqrt area) each side
REF_BAND_MIN = 3  # px, at least
REF_BAND_MAX = 16  # px, at most
REF_CORE = 0.2  # share of the mask deeper than the band below which it is all edge: left alone
REF_HOLD = 1.5  # log-odds the carried edge holds by (flipping a pixel takes stronger evidence)
REF_PRIOR = 0.6  # ... plus this per px of distance to the carried edge (how hard the edge holds)
REF_BINS = 16  # colour histogram bins per RGB channel
REF_COLOUR_CLIP = 3.0  # most log-odds the colour model may give either way
REF_FG_ERODE = 0.06  # the keyframe mask is eroded by this x its size for the object's colours
REF_RING = 0.25  # the background's colours: a ring this x the object's size outside it
REF_ADAPT = 0.05  # share of each frame's colours mixed into the model (0: keyframe only)
REF_MOTION = 3.0  # log-odds of a pixel clearly following the object's (background's) motion
REF_MOTION_SEP = 0.5  # px/frame: object and background motions closer than this say nothing
REF_NOISE = 200.0  # grey-level^2 (3x3 sum): differences this small say little about motion
RESEED = 0.06  # the chain restarts from the refined mask when it changed this share of its area
# Finding a lost object again.
FIND_MIN = 0.6  # normalised template score worth confirming with ECC
FIND_SCALES = (0.8, 0.9, 1.0, 1.12, 1.25)  # sizes tried, relative to the last known one
SEARCH_PIXELS = 1200  # the frame is downscaled so the template has about this many pixels
# Morphology.
KERNEL3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
KERNEL5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
