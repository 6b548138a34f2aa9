"""Threshold profiles and device models: the standard's numbers and register maps, as data."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Sequence
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .units import Duration, Severity


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """Limits on one metric. A value above `max` or below `min` raises after `hold`;
    it clears once back inside by `hysteresis` for `clear_hold`."""

    min: float | None = None
    max: float | None = None
    hysteresis: float = Field(0.0, ge=0)
    hold: Duration = 0.0
    clear_hold: Duration = 0.0
    severity: Severity = "III"
    unit: str = ""
    label: str = ""
    enabled: bool = True
    # Device state is re-published when a value moves by more than this (0: on every change).
    deadband: float = Field(0.0, ge=0)
    # A limit itself counts as a violation ("≥ 90 %" rather than "> 90 %").
    inclusive: bool = False
    # A second, more severe level: e.g. lamp life ≥ 90 % → IV, ≥ 100 % → III.
    critical_max: float | None = None
    critical_min: float | None = None
    critical_severity: Severity = "II"
    # Text readings that raise an alert, with their grade: {warning: III, error: II}.
    states: dict[str, Severity] = {}
    # Applies only while the room is in use (a meeting runs): a muted main mix in an empty
    # room is normal. Rooms without bookings count as always in use.
    in_use_only: bool = False
    # Applies only while a room with bookings is vacant (no meeting now, none within
    # meetings.keep_on_within): a window open or lights on after the meeting (STANDARD §2),
    # normal while people are in the room or it is being readied.
    idle_only: bool = False
    # Warn this long before `max` is reached, from the room's rise rate (daemon/forecast.py):
    # the reading `{metric}_forecast` ("crossing"), which its own threshold grades.
    forecast: Duration | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.critical_max is not None and self.max is not None and self.critical_max < self.max:
            raise ValueError("critical_max must not be below max")
        if self.critical_min is not None and self.min is not None and self.critical_min > self.min:
            raise ValueError("critical_min must not be above min")
        if self.in_use_only and self.idle_only:
            raise ValueError("in_use_only and idle_only exclude each other")
        return self


class ThresholdOverride(_Strict):
    """Same keys as Threshold, all optional: a room changes only what it names."""

    min: float | None = None
    max: float | None = None
    hysteresis: float | None = Field(None, ge=0)
    hold: Duration | None = None
    clear_hold: Duration | None = None
    severity: Severity | None = None
    unit: str | None = None
    label: str | None = None
    enabled: bool | None = None
    deadband: float | None = Field(None, ge=0)
    inclusive: bool | None = None
    critical_max: float | None = None
    critical_min: float | None = None
    critical_severity: Severity | None = None
    states: dict[str, Severity] | None = None
    in_use_only: bool | None = None
    idle_only: bool | None = None
    forecast: Duration | None = None


def merge_threshold(base: Threshold | None, override: ThresholdOverride) -> Threshold:
    values: dict[str, Any] = base.model_dump() if base else {}
    values.update(override.model_dump(exclude_unset=True))
    return Threshold.model_validate(values)


class Profile(_Strict):
    name: str
    description: str = ""
    thresholds: dict[str, Threshold]

    def with_overrides(self, overrides: dict[str, ThresholdOverride]) -> dict[str, Threshold]:
        merged = dict(self.thresholds)
        for metric, override in overrides.items():
            merged[metric] = merge_threshold(self.thresholds.get(metric), override)
        return merged


RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]
_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


class RegisterSpec(_Strict):
    """One metric in a device's register map. Addresses are 0-based protocol addresses."""

    metric: str
    function: Literal[3, 4]
    address: int = Field(ge=0, le=65535)
    type: RegisterType = "uint16"
    scale: float = 1.0
    offset: float = 0.0
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    decimals: int | None = Field(None, ge=0, le=6)

    @property
    def width(self) -> int:
        return _WIDTH[self.type]

    @cached_property
    def _fast(self) -> struct.Struct | None:
        # Big-endian words in big-endian order (the Modbus norm) unpack straight from the wire.
        if self.word_order == "big" and self.byte_order == "big":
            return struct.Struct(">" + _STRUCT[self.type])
        return None

    @cached_property
    def _integral(self) -> bool:
        return self.type != "float32" and self.scale == 1.0 and self.offset == 0.0

    def read(self, raw: bytes, byte_offset: int) -> float | int:
        """Decode this field from a block's raw register bytes (hot path)."""
        fast = self._fast
        if fast is None:
            words = struct.unpack_from(f">{self.width}H", raw, byte_offset)
            return self.decode(words)
        (value,) = fast.unpack_from(raw, byte_offset)
        if self._integral:
            return int(value)
        result = value * self.scale + self.offset
        return round(result, self.decimals) if self.decimals is not None else result

    def decode(self, regs: Sequence[int]) -> float:
        words = list(regs)
        if self.word_order == "little":
            words.reverse()
        bo = ">" if self.byte_order == "big" else "<"
        raw = b"".join(struct.pack(bo + "H", w) for w in words)
        (value,) = struct.unpack(">" + _STRUCT[self.type], raw)
        result = value * self.scale + self.offset
        return round(result, self.decimals) if self.decimals is not None else result

    def encode(self, value: float) -> list[int]:
        raw_value: float | int = (value - self.offset) / self.scale
        if self.type != "float32":
            lo, hi = _RANGE[self.type]
            raw_value = max(lo, min(hi, round(raw_value)))
        raw = struct.pack(">" + _STRUCT[self.type], raw_value)
        bo = ">" if self.byte_order == "big" else "<"
        words = [struct.unpack(bo + "H", raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
        if self.word_order == "little":
            words.reverse()
        return words


_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


class SerialDefaults(_Strict):
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class ModelWrite(_Strict):
    """A named holding-register write (setpoints, commands), used by later automation."""

    address: int = Field(ge=0, le=65535)
    type: RegisterType = "uint16"
    scale: float = 1.0
    value: float | None = None
    # What a command may write, in engineering units (e.g. a setpoint 16–30 °C). Without
    # them, anything the register type can hold.
    min: float | None = None
    max: float | None = None

    def registers(self, value: float) -> list[int]:
        """The register words for `value`; ValueError naming the allowed range otherwise."""
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            lo_s = "" if self.min is None else f"{self.min:g}"
            hi_s = "" if self.max is None else f"{self.max:g}"
            raise ValueError(f"{value:g} is outside the model's range [{lo_s}, {hi_s}]")
        raw: float = value / self.scale
        if self.type == "float32":
            if not math.isfinite(raw) or abs(raw) > 3.4e38:
                raise ValueError(f"{value:g} does not fit a float32 register")
        else:
            lo, hi = _RANGE[self.type]
            if not math.isfinite(raw) or not lo <= round(raw) <= hi:
                raise ValueError(
                    f"{value:g} does not fit the {self.type} register "
                    f"({lo * self.scale:g} to {hi * self.scale:g})"
                )
            raw = round(raw)
        packed = struct.pack(">" + _STRUCT[self.type], raw)
        return list(struct.unpack(f">{_WIDTH[self.type]}H", packed))


class BitSpec(_Strict):
    """One coil (function 1, a relay's state) or discrete input (function 2, a contact)."""

    metric: str
    function: Literal[1, 2]
    address: int = Field(ge=0, le=65535)
    # The reading's text for 0 and 1 (a door contact: [closed, open]); without: 0 or 1.
    states: tuple[str, str] | None = None

    def value(self, bit: int) -> str | int:
        return self.states[bit] if self.states is not None else bit


class CoilWrite(_Strict):
    """A named coil write (function 5): switch a relay on or off."""

    address: int = Field(ge=0, le=65535)
    value: bool


class DeviceModel(_Strict):
    model: str
    manufacturer: str = ""
    description: str = ""
    serial: SerialDefaults = SerialDefaults()
    default_unit: int = Field(1, ge=0, le=255)
    registers: list[RegisterSpec] = []
    bits: list[BitSpec] = []
    writes: dict[str, ModelWrite] = {}
    coils: dict[str, CoilWrite] = {}
    # Named writes (registers or coils) done at points of a meeting's day, in order:
    # before the pre-meeting check (lights on, so the check measures the lit room), before
    # the meeting (the projector circuit on), and after it (lights off, blinds up, STANDARD §2).
    before_check: list[str] = []
    before_meeting: list[str] = []
    after_meeting: list[str] = []

    @property
    def metrics(self) -> list[str]:
        return [r.metric for r in self.registers] + [b.metric for b in self.bits]

    @model_validator(mode="after")
    def _consistent(self) -> DeviceModel:
        if not self.registers and not self.bits:
            raise ValueError("a model reads at least one register or bit")
        both = set(self.writes) & set(self.coils)
        if both:
            raise ValueError(f"{sorted(both)[0]!r} is both a register write and a coil")
        for when in ("before_check", "before_meeting", "after_meeting"):
            for name in getattr(self, when):
                if name not in self.writes and name not in self.coils:
                    raise ValueError(f"{when}: {name!r} is not a write or coil of this model")
        return self


class ReadBlock:
    """One request covering several registers; `fields` are (spec, offset-in-block)."""

    @property
    def reply_bytes(self) -> int:
        return 2 * self.count

    __slots__ = ("_plan", "address", "count", "fields", "function")

    def __init__(self, function: int, address: int, count: int) -> None:
        self.function = function
        self.address = address
        self.count = count
        self.fields: list[tuple[RegisterSpec, int]] = []
        self._plan: _BlockPlan | bool | None = None  # built on first decode

    def decode(self, regs: Sequence[int], into: dict[str, Any]) -> None:
        self.decode_raw(struct.pack(f">{len(regs)}H", *regs), into)

    def decode_raw(self, raw: bytes, into: dict[str, Any]) -> None:
        """From the registers as they came on the wire (big-endian words)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = self._make_plan()
        if plan is False:
            for spec, offset in self.fields:
                into[spec.metric] = spec.read(raw, offset * 2)
            return
        assert isinstance(plan, tuple)
        unpack, post = plan
        # Every field in one unpack; then each as RegisterSpec.read would give it (the plan
        # holds each field's place in the unpacked tuple: indexing is cheaper than zip here).
        values = unpack(raw)
        for metric, index, how, scale, add, decimals in post:
            value = values[index]
            if how is _AS_IS:
                into[metric] = value
            elif how is _DIVIDE:
                into[metric] = value / scale
            elif decimals is None:
                into[metric] = value * scale + add
            else:
                into[metric] = round(value * scale + add, decimals)

    def _make_plan(self) -> _BlockPlan | bool:
        """One struct for the whole block when its fields are big-endian and do not overlap
        (the Modbus norm); False: decode field by field."""
        fmt, at = ">", 0
        post: list[tuple[str, int, str, float, float, int | None]] = []
        for spec, offset in sorted(self.fields, key=lambda f: f[1]):
            if spec.word_order != "big" or spec.byte_order != "big" or offset < at:
                return False
            if offset > at:
                fmt += f"{2 * (offset - at)}x"
            fmt += _STRUCT[spec.type]
            at = offset + spec.width
            post.append((spec.metric, len(post), *_decoding(spec)))
        if 2 * at > self.reply_bytes:
            return False
        return struct.Struct(fmt).unpack_from, post


_BlockPlan = tuple[
    Callable[[bytes], tuple[Any, ...]], list[tuple[str, int, str, float, float, int | None]]
]
_AS_IS, _DIVIDE, _SCALE = "as is", "divide", "scale"


def _decoding(spec: RegisterSpec) -> tuple[str, float, float, int | None]:
    """How a block decoder turns a field's raw integer into its reading, exactly as
    RegisterSpec.read does: as is; divided by 10^k (a scale of 10^-k rounded to k or more
    decimals: the same double as round(), whose decimal formatting costs ≈ 1 µs); or scaled,
    offset and rounded."""
    if spec.type == "float32":
        return _SCALE, spec.scale, spec.offset, spec.decimals
    if spec.scale == 1.0 and spec.offset == 0.0:
        return _AS_IS, 1.0, 0.0, None
    if spec.offset == 0.0 and spec.decimals is not None:
        # round(v × 10^-k, d) for an integer v and k ≤ d is the double nearest the decimal
        # v / 10^k, and so is v / 10^k itself (IEEE division is correctly rounded; 10^k is
        # exact for k ≤ 22).
        for k in range(min(spec.decimals, 15) + 1):
            if spec.scale == float(f"1e-{k}"):
                return _DIVIDE, 10.0**k, 0.0, spec.decimals
    return _SCALE, spec.scale, spec.offset, spec.decimals


class BitBlock(ReadBlock):
    """One request covering several coils or discrete inputs; the reply is a bitmap."""

    __slots__ = ("bits",)

    def __init__(self, function: int, address: int, count: int) -> None:
        super().__init__(function, address, count)
        self.bits: list[tuple[BitSpec, int]] = []

    @property
    def reply_bytes(self) -> int:
        return (self.count + 7) // 8

    def decode_bits(self, bits: Sequence[bool], into: dict[str, Any]) -> None:
        for spec, offset in self.bits:
            into[spec.metric] = spec.value(int(bool(bits[offset])))

    def decode_raw(self, raw: bytes, into: dict[str, Any]) -> None:
        for spec, offset in self.bits:
            into[spec.metric] = spec.value((raw[offset // 8] >> (offset % 8)) & 1)


def plan_reads(model: DeviceModel, max_gap: int = 4, max_count: int = 120) -> list[ReadBlock]:
    """Group a model's registers (and bits) into as few requests as possible."""
    blocks: list[ReadBlock] = []
    for function in (1, 2):
        bit_block: BitBlock | None = None
        bits = sorted((b for b in model.bits if b.function == function), key=lambda b: b.address)
        for bit in bits:
            if bit_block is not None and bit.address - bit_block.address < 2000:
                bit_block.count = max(bit_block.count, bit.address - bit_block.address + 1)
            else:
                bit_block = BitBlock(function, bit.address, 1)
                blocks.append(bit_block)
            bit_block.bits.append((bit, bit.address - bit_block.address))
    for function in (3, 4):
        specs = sorted(
            (r for r in model.registers if r.function == function), key=lambda r: r.address
        )
        current: ReadBlock | None = None
        for spec in specs:
            end = spec.address + spec.width
            if (
                current is not None
                and spec.address - (current.address + current.count) <= max_gap
                and end - current.address <= max_count
            ):
                current.count = max(current.count, end - current.address)
            else:
                current = ReadBlock(function, spec.address, spec.width)
                blocks.append(current)
            current.fields.append((spec, spec.address - current.address))
    return blocks


LOGICAL_INPUT = re.compile(
    r"^(hdmi|vga|dvi|displayport|hdbaset|sdi|video|svideo|component|usb|network|mirroring)\d$"
)


def check_input_names(inputs: dict[str, str]) -> dict[str, str]:
    """For a model's `inputs:` (name → code): names must be logical, codes unique."""
    for name in inputs:
        if not LOGICAL_INPUT.match(name):
            raise ValueError(
                f"input name {name!r}: use hdmi1, vga2, hdbaset1, network1 and the like"
            )
    codes = list(inputs.values())
    if len(set(codes)) != len(codes):
        raise ValueError("two input names map to one code")
    return inputs


class ProjectorModel(_Strict):
    """Rated values of a projector model: the limits its rules are measured against."""

    model: str
    manufacturer: str = ""
    description: str = ""
    rated_lamp_hours: int | None = Field(None, ge=0)
    rated_filter_hours: int | None = Field(None, ge=0)
    rated_lumens: int | None = Field(None, ge=0)
    native_resolution: str | None = Field(None, pattern=r"^\d{3,5}x\d{3,5}$")
    min_poll: Duration = 5.0
    warmup: Duration = 60.0
    # Logical input name → this model's PJLink input code (drivers/inputs.py).
    inputs: dict[str, str] = {}

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        return check_input_names(value)


def _builtin(kind: str) -> Path:
    return Path(str(resources.files("roomd").joinpath("profiles", kind)))


class ProfileError(ValueError):
    """A profile or model that is unknown or invalid. A ValueError, so config validators can
    call the loaders directly and pydantic reports the message against the key."""


M = TypeVar("M", bound=BaseModel)


def builtin_names(kind: str) -> list[str]:
    return sorted(p.stem for p in _builtin(kind).glob("*.yaml"))


def load_yaml_model(kind: str, what: str, cls: type[M], name_or_path: str) -> M:
    """A shipped file by name (roomd/profiles/<kind>/<name>.yaml) or any YAML file by path,
    validated as `cls`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _builtin(kind) / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(builtin_names(kind))
        raise ProfileError(f"unknown {what} {name_or_path!r} (known: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return cls.model_validate(data)
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}") from None


@cache
def load_profile(name_or_path: str) -> Profile:
    """A built-in threshold profile by name (`standard`) or a YAML file by path."""
    return load_yaml_model("", "profile", Profile, name_or_path)


def builtin_profiles() -> list[str]:
    return builtin_names("")


def builtin_models() -> list[str]:
    return builtin_names("models")


@cache
def load_model(name_or_path: str) -> DeviceModel:
    """A built-in Modbus device model by name (`xy-md02`) or a register map by path."""
    return load_yaml_model("models", "model", DeviceModel, name_or_path)


@cache
def load_projector_model(name_or_path: str) -> ProjectorModel:
    return load_yaml_model("projectors", "projector model", ProjectorModel, name_or_path)
