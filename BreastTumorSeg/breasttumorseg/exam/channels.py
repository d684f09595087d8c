"""Binding a foreign model's input channels to the phases of a DCE study.

An nnU-Net model names its input channels in ``dataset.json`` (``"channel_names": {"0":
"..."}``); each is bound to one *role* of the study (``NAME=ROLE`` on the command line):

- ``pre``: the pre-contrast phase;
- ``post1`` ... ``postN``: the k-th post-contrast phase (acquisition order);
- ``last``: the last phase;
- ``sub1`` ... ``subN``: post-contrast k minus the pre-contrast (subtraction image).

Without a mapping, the MAMA-MIA preset binds a model with a single channel to the first
post-contrast phase (MAMA-MIA's public model takes that image, raw). Every problem (an
unknown channel or role, a channel left unmapped, a role the study's phases cannot give)
is one line naming the channel, raised before anything runs.
"""

from __future__ import annotations

import re

import numpy as np

from ..core.errors import InputError

OPTION = "--channel"
#: Name of the preset used when no mapping is given and the model has one channel.
MAMA_MIA_PRESET = "MAMA-MIA (its one channel = the first post-contrast phase)"
_ROLE = re.compile(r"^(pre|last|post([1-9][0-9]*)|sub([1-9][0-9]*))$")


def parse_channel_option(text: str) -> tuple[str, str]:
    """``"NAME=ROLE"`` -> ``(NAME, ROLE)`` (the role checked)."""
    name, separator, role = str(text).rpartition("=")
    if not separator or not name.strip():
        raise InputError(f"expected NAME=ROLE (e.g. DCE_1=post1), got {text!r}", OPTION)
    check_role(name.strip(), role.strip())
    return name.strip(), role.strip()


def check_role(channel: str, role: str) -> None:
    """Raise for a role that is not one of ``pre``, ``postK``, ``last``, ``subK``."""
    if not _ROLE.match(role):
        raise InputError(f"channel {channel!r}: unknown role {role!r} (pre, post1 ... postN, last, sub1 ... subN)",
                         OPTION)


def phases_needed(role: str) -> int:
    """Phases (pre-contrast included) a study needs to give ``role``."""
    match = _ROLE.match(role)
    number = match.group(2) or match.group(3)
    return 1 + int(number) if number else (1 if role == "pre" else 2)


def bind_channels(channel_names: list[str], mapping) -> tuple[tuple[str, ...], str]:
    """The role of each channel, in channel order, and how it was chosen (``"--channel"``
    or the preset's name).

    ``channel_names``: the model's channels in order; ``mapping``: ``(name, role)`` pairs or
    ``"NAME=ROLE"`` strings (empty: the preset, when one applies).
    """
    pairs = [parse_channel_option(m) if isinstance(m, str) else (str(m[0]), str(m[1])) for m in mapping or ()]
    if not pairs:
        if len(channel_names) == 1:
            return ("post1",), MAMA_MIA_PRESET
        raise InputError(f"channel {channel_names[0]!r} is not mapped to a phase: give {OPTION} NAME=ROLE for each "
                         f"of the model's channels ({', '.join(channel_names)})", OPTION)
    roles = {}
    for name, role in pairs:
        check_role(name, role)
        if name not in channel_names:
            raise InputError(f"channel {name!r} is not one of the model's channels ({', '.join(channel_names)})",
                             OPTION)
        if name in roles:
            raise InputError(f"channel {name!r} is mapped twice", OPTION)
        roles[name] = role
    for name in channel_names:
        if name not in roles:
            raise InputError(f"channel {name!r} is not mapped to a phase (give {OPTION} {name}=ROLE)", OPTION)
    return tuple(roles[name] for name in channel_names), OPTION


def check_phases(channel_names: list[str], roles, n_phases: int, source: str) -> None:
    """Raise when the study's ``n_phases`` phases cannot give every channel's role."""
    for name, role in zip(channel_names, roles):
        needed = phases_needed(role)
        if n_phases < needed:
            raise InputError(f"channel {name!r} is mapped to {role}, which needs {needed} phases; the study has "
                             f"{n_phases}", source)


def channel_image(phases: np.ndarray, role: str) -> np.ndarray:
    """One channel (float32 ``[z, y, x]``) of the phases ``[T, z, y, x]`` for ``role``."""
    match = _ROLE.match(role)
    if role == "pre":
        image = phases[0]
    elif role == "last":
        image = phases[-1]
    elif match.group(2):
        image = phases[int(match.group(2))]
    else:
        image = phases[int(match.group(3))].astype(np.float32) - phases[0].astype(np.float32)
    return np.asarray(image, dtype=np.float32)


def channel_images(phases: np.ndarray, roles) -> np.ndarray:
    """The model's input ``[C, z, y, x]`` (float32) of the phases for the bound roles."""
    return np.stack([channel_image(phases, role) for role in roles])
