from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.daemon.profiles import (
    BitBlock,
    ProfileError,
    ReadBlock,
    RegisterSpec,
    Threshold,
    ThresholdOverride,
    builtin_models,
    load_model,
    merge_threshold,
    plan_reads,
)


def test_builtin_models_and_their_maps() -> None:
    assert {"xy-md02", "scd30", "senseair-s8", "rs485-lux", "generic-iaq"} <= set(builtin_models())
    xy = load_model("xy-md02")
    assert [(r.function, r.address, r.type, r.scale) for r in xy.registers] == [
        (4, 1, "int16", 0.1),
        (4, 2, "int16", 0.1),
    ]
    assert (xy.serial.baudrate, xy.serial.parity) == (9600, "E")
    scd = load_model("scd30")
    assert [(r.function, r.address, r.type) for r in scd.registers] == [
        (3, 0x28, "float32"),
        (3, 0x2A, "float32"),
        (3, 0x2C, "float32"),
    ]
    assert load_model("senseair-s8").registers[0].address == 3
    lux = load_model("rs485-lux").registers[0]
    assert (lux.function, lux.address, lux.type) == (3, 7, "uint32")
    assert set(load_model("generic-iaq").metrics) == {
        "temperature_c",
        "humidity_pct",
        "co2_ppm",
        "illuminance_lux",
        "color_temp_k",
    }
    with pytest.raises(ProfileError, match="unknown model 'nope'"):
        load_model("nope")


def test_wire_examples() -> None:
    # XY-MD02: 0x00EB = 235 → 23.5 °C; negative temperatures are two's complement.
    t = RegisterSpec(metric="t", function=4, address=1, type="int16", scale=0.1, decimals=1)
    assert t.decode([0x00EB]) == 23.5
    assert t.decode([0xFFEC]) == -2.0
    # SCD30 float32 big-endian: 0x43DB8CE3 ≈ 439.1 ppm (Sensirion interface description).
    f = RegisterSpec(metric="co2", function=3, address=0x28, type="float32", decimals=1)
    assert f.decode([0x43DB, 0x8CE3]) == 439.1
    # u32 lux, high word first: 0x0001 0x86A0 = 100000 lux
    u = RegisterSpec(metric="lux", function=3, address=7, type="uint32")
    assert u.decode([0x0001, 0x86A0]) == 100000


@given(
    st.sampled_from(["int16", "uint16", "int32", "uint32"]),
    st.sampled_from(["big", "little"]),
    st.sampled_from(["big", "little"]),
    st.integers(min_value=-(2**31), max_value=2**32 - 1),
)
def test_integer_round_trip(kind: str, words: str, bytes_: str, value: int) -> None:
    spec = RegisterSpec(
        metric="m",
        function=3,
        address=0,
        type=kind,  # type: ignore[arg-type]
        word_order=words,
        byte_order=bytes_,
    )  # type: ignore[arg-type]
    lo, hi = {
        "int16": (-(2**15), 2**15 - 1),
        "uint16": (0, 2**16 - 1),
        "int32": (-(2**31), 2**31 - 1),
        "uint32": (0, 2**32 - 1),
    }[kind]
    expected = max(lo, min(hi, value))
    regs = spec.encode(value)
    assert len(regs) == spec.width and all(0 <= r <= 0xFFFF for r in regs)
    assert spec.decode(regs) == expected


@given(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.sampled_from(["big", "little"])
)
def test_float_round_trip(value: float, words: str) -> None:
    spec = RegisterSpec(metric="m", function=3, address=0, type="float32", word_order=words)  # type: ignore[arg-type]
    assert spec.decode(spec.encode(value)) == pytest.approx(value, rel=1e-6, abs=1e-6)


def test_plan_reads_groups_registers() -> None:
    blocks = plan_reads(load_model("generic-iaq"))
    assert [(b.function, b.address, b.count) for b in blocks] == [(4, 0, 6)]
    blocks = plan_reads(load_model("scd30"))
    assert [(b.function, b.address, b.count) for b in blocks] == [(3, 0x28, 6)]
    assert [off for _, off in blocks[0].fields] == [0, 2, 4]


def test_override_merges_and_validates() -> None:
    base = Threshold(min=20, max=24, hysteresis=0.5, hold=60, severity="III")
    merged = merge_threshold(base, ThresholdOverride(max=23))
    assert (merged.min, merged.max, merged.hysteresis, merged.hold) == (20, 23, 0.5, 60)
    with pytest.raises(ValueError, match="min 25 is above max 24"):
        merge_threshold(base, ThresholdOverride(min=25))


def test_every_shipped_profile_and_model_loads() -> None:
    from pathlib import Path

    import roomd
    from roomd.daemon.profiles import builtin_profiles, load_profile, load_projector_model

    for name in builtin_profiles():
        load_profile(name)
    for name in builtin_models():
        load_model(name)
    projectors = Path(roomd.__file__).parent / "profiles" / "projectors"
    names = sorted(p.stem for p in projectors.glob("*.yaml"))
    assert {"generic", "epson-eb-2250u", "sony-vpl-fhz75", "roomd-simulator"} <= set(names)
    for name in names:
        assert load_projector_model(name).min_poll > 0


_MODELS = ["generic-iaq", "io-8di-8do-room", "rs485-lux", "scd30", "senseair-s8", "xy-md02"]


@given(st.sampled_from(_MODELS), st.data())
def test_a_block_decodes_in_one_unpack_as_field_by_field(name: str, data: st.DataObject) -> None:
    """The block decoder (one struct for the block) gives exactly what each field's own reader
    gives, for every shipped model and any register contents."""
    for block in plan_reads(load_model(name)):
        if isinstance(block, BitBlock):
            continue
        raw = data.draw(st.binary(min_size=block.reply_bytes, max_size=block.reply_bytes))
        whole: dict[str, object] = {}
        block.decode_raw(raw, whole)
        one_by_one = {spec.metric: spec.read(raw, offset * 2) for spec, offset in block.fields}
        assert whole.keys() == one_by_one.keys()
        for metric, value in one_by_one.items():
            got = whole[metric]
            assert type(got) is type(value)
            assert got == value or (got != got and value != value)  # NaN from a float32


@given(
    st.sampled_from(["int16", "uint16", "int32", "uint32"]),
    st.integers(0, 6),
    st.integers(0, 6),
    st.binary(min_size=4, max_size=4),
)
def test_a_decimal_scale_decodes_by_division_as_round_gives(
    kind: str, k: int, extra: int, raw: bytes
) -> None:
    """A scale of 10^-k rounded to d ≥ k decimals is decoded by dividing by 10^k (round()
    formats a decimal string, ≈ 1 µs a reading): the very same double as the field's reader,
    for every raw value of every integer type."""
    decimals = min(6, k + extra)
    spec = RegisterSpec(
        metric="m", function=3, address=0, type=kind, scale=float(f"1e-{k}"), decimals=decimals
    )
    block = ReadBlock(3, 0, 2)
    block.fields.append((spec, 0))
    got: dict[str, object] = {}
    block.decode_raw(raw, got)
    want = spec.read(raw, 0)
    assert type(got["m"]) is type(want) and got["m"] == want
