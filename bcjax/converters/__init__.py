"""One converter per backbone family: framework keys -> our state paths.

Each family module exposes `KINDS` (per source, what file a user should pass, for messages),
`identify(tensors, source) -> (arch or None, what the keys show)` and
`convert(tensors, source, arch, what) -> Converted` (raising `ConversionError` that lists every
missing, unexpected or misshapen key). `bcjax.convert` reads the files and picks the family.
"""

from bcjax.converters import mobilenet_v3, resnet, vgg

CONVERTERS = {"resnet": resnet, "vgg": vgg, "mobilenet_v3": mobilenet_v3}

__all__ = ["CONVERTERS"]
