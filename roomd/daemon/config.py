"""Site config: YAML → validated models, every problem reported as FILE:LINE: key.path: message.

Validation happens completely before anything connects (Telegraf's rule): drivers' own config
models are checked here, profiles and device models are loaded here.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..drivers import driver_class, known_drivers
from ..drivers.base import DeviceConfig, DriverContext
from .attendance import check_roster
from .authz import AuthorizationConfig
from .profiles import ProfileError, Threshold, ThresholdOverride, load_profile, merge_threshold
from .units import Duration
from .yamlpos import Loc, Located, YamlSyntaxError, load_located

_ID = r"^[a-z0-9_-]+$"
# Contract §4 and the room-level readings: metrics a threshold may name even when no
# configured device produces them yet.
KNOWN_METRICS = frozenset(
    {
        "temperature_c",
        "humidity_pct",
        "co2_ppm",
        "illuminance_lux",
        "color_temp_k",
        "sound_level_db",
        "snr_db",
        "audio_dropouts",
        "projector_power",
        "lamp_hours",
        "filter_hours",
        "input_resolution",
        "signin_latency_s",
        "attendees",
        "area_per_person_m2",
        "link_mbps",
        "wifi_rssi_dbm",
        "online",
        "air_changes_per_hour",
        "signin_latency_p95_seconds",
        "room_ready",
        "room_sealed",
        "bookings",
        "days_since_inspection",
        "instance_conflict",
    }
)
ROOM_DEVICE = "_room"  # the device part of room-level readings and alerts (attendees, …)
DEFAULT_PATHS = ("./roomd.yaml", "/etc/roomd/roomd.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Strict):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    topic_prefix: str = Field("roomd", pattern=r"^[A-Za-z0-9_/-]+$")
    client_id: str | None = None
    keepalive: Duration = 30.0
    # QoS of the retained latest-value topics (room and device state). Alert and event
    # messages always use QoS 1 through the outbox. 0 halves the broker traffic of a large
    # fleet; nothing is lost that matters, as every state is re-sent after a reconnect.
    state_qos: Literal[0, 1] = 1
    # A number that moved past its deadband is re-published at most this often per device (a
    # noisy sensor polled every second would otherwise put every poll on the bus); text
    # states (power, lamp, contacts), availability and a changed set of readings go at once.
    state_min_interval: Duration = Field(5.0, ge=0, le=300)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, not {parts.scheme or 'none'}")
        if not parts.hostname:
            raise ValueError("missing host")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("port must be a number from 1 to 65535") from None
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def secret(self) -> str | None:
        """The password, from `password_file` or `password` (which may be `${ENV}`)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password.get_secret_value() if self.password else None


def _check_listen(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9880")
    return value


class HttpConfig(_Strict):
    listen: str = "127.0.0.1:9880"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class SigninsConfig(_Strict):
    """Sign-in records (STANDARD §5: internal, kept 2 years, then destroyed)."""

    secret_file: Path | None = None  # HMAC key for card hashes; generated in state_dir if absent
    retention: Duration = 730 * 86400.0
    min_for_p95: int = Field(20, ge=1)  # sign-ins in a meeting before its p95 is judged
    # STANDARD §5: the attendee list is "very high" confidentiality. Names go on the shared
    # `events` topic only when this is set; otherwise events say `known: true|false`.
    publish_names: bool = False


class EscalationConfig(_Strict):
    """STANDARD §3 (centre rules art. 7): a problem reported but not solved is reported again
    and again until it is solved. Unacknowledged alerts of these grades are re-announced."""

    interval: Duration = 300.0
    grades: list[Literal["I", "II", "III", "IV"]] = ["I", "II"]


class MeetingsConfig(_Strict):
    """STANDARD §2–§4 around each booking: the three-level check, pre-warm, no-show, shutdown."""

    # Level 1, 2, 3 at these times before the start (T−2 h, T−1 h, T−30 min).
    check_levels: list[Duration] = Field(
        default=[7200.0, 3600.0, 1800.0], min_length=3, max_length=3
    )
    # Large and important meetings: a full inspection this long before, then the room is sealed.
    inspection: Duration = 86400.0
    prewarm: Duration | None = None  # power projectors on this long before the start
    keep_on_within: Duration = 1800.0  # a check this close to the start leaves projectors on
    expect_source: bool = False  # the projector check needs a ≥ 1920×1080 signal
    no_show_after: Duration = 600.0
    shutdown_grace: Duration = 600.0  # after the end, before switching off
    shutdown_gap: Duration = 1800.0  # no shutdown when the next meeting starts within this
    calendar_refresh: Duration = 300.0
    horizon: Duration = 2 * 86400.0  # how far ahead calendars are expanded
    # Occurrences per source at most (a calendar with RRULE:FREQ=SECONDLY); more → an alert.
    max_bookings: int = Field(2000, ge=1, le=100_000)
    failover: bool = True
    # Outdoor CO₂ for the ventilation estimate from the decay after a meeting; None: learned
    # (the lowest room CO₂ seen, within 380-500 ppm; 420 until then).
    outdoor_co2_ppm: float | None = Field(None, ge=300, le=700)

    @field_validator("check_levels")
    @classmethod
    def _descending(cls, value: list[float]) -> list[float]:
        if not value[0] > value[1] > value[2] > 0:
            raise ValueError(
                "levels 1, 2, 3 must come ever closer to the start, e.g. [2h, 1h, 30m]"
            )
        return value


class HomeAssistantConfig(_Strict):
    enabled: bool = False
    prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_/-]+$")
    # Home Assistant's broker login: its commands then go to `cmd/by/{login}`, so that
    # `authorization` rules can name it.
    login: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]+$")


Grade = Literal["I", "II", "III", "IV"]
_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d$"


class NotifyTarget(_Strict):
    """Where a notification goes: an Apprise URL (mailto://, wecombot://, dingtalk://,
    feishu://, slack://, msteams://, ntfy://, json://, ...), inline or, as it holds secrets,
    from a file."""

    url: SecretStr | None = None
    url_file: Path | None = None
    language: Literal["en", "zh-CN"] | None = None

    @model_validator(mode="after")
    def _one_url(self) -> NotifyTarget:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give url or url_file (one of them)")
        if self.url_file is not None and not self.url_file.is_file():
            raise ValueError(f"{self.url_file}: no such file")
        return self

    def secret(self) -> str:
        if self.url_file is not None:
            return self.url_file.read_text(encoding="utf-8").strip()
        assert self.url is not None
        return self.url.get_secret_value()


class NotifyTier(_Strict):
    after: Duration = 0.0  # since the raise, while nobody has acknowledged
    targets: list[str] = Field(min_length=1)


class QuietHours(_Strict):
    start: str = Field(pattern=_CLOCK)  # local time, "22:00"
    end: str = Field(pattern=_CLOCK)  # "07:00"
    grades: list[Grade] = ["I", "II"]  # still sent at once; others wait for the end


class NotifyMatch(_Strict):
    grades: list[Grade] = ["I", "II", "III"]
    rooms: list[str] = ["*"]  # globs over room ids and groups
    kinds: list[str] = []  # device kinds (pjlink, modbus, ...); empty: any
    metrics: list[str] = []  # globs; empty: any
    in_meeting: Literal["any", "yes", "no"] = "any"


class NotifyRoute(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    match: NotifyMatch = Field(default_factory=NotifyMatch)
    tiers: list[NotifyTier] = Field(min_length=1, max_length=6)
    repeat: Duration | None = None  # again to the last tier reached, while unacknowledged
    quiet_hours: QuietHours | None = None
    language: Literal["en", "zh-CN"] | None = None

    @field_validator("tiers")
    @classmethod
    def _ascending(cls, tiers: list[NotifyTier]) -> list[NotifyTier]:
        afters = [t.after for t in tiers]
        if afters != sorted(afters) or len(set(afters)) != len(afters):
            raise ValueError("tiers must come later one after another (after: 0s, 5m, 15m)")
        return tiers


class RateLimit(_Strict):
    messages: int = Field(20, ge=1)  # per target ...
    per: Duration = 3600.0  # ... in this window; more are sent as one summary


class Digest(_Strict):
    at: str = Field("08:30", pattern=_CLOCK)  # local time, daily
    grades: list[Grade] = ["IV"]
    targets: list[str] = Field(min_length=1)


class NotificationsConfig(_Strict):
    """People in the loop (STANDARD §3: on-site → organiser → security centre within a
    minute, reported again and again until solved)."""

    targets: dict[str, NotifyTarget] = {}
    routes: list[NotifyRoute] = []
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    digest: Digest | None = None
    # Where "acknowledge" links point (the console's address as people reach it).
    console_url: str | None = None

    @model_validator(mode="after")
    def _known_targets(self) -> NotificationsConfig:
        named = [t for r in self.routes for tier in r.tiers for t in tier.targets]
        named += self.digest.targets if self.digest else []
        unknown = sorted(set(named) - set(self.targets))
        if unknown:
            raise ValueError(f"unknown targets {unknown}; known: {sorted(self.targets)}")
        names = [r.name for r in self.routes]
        if len(names) != len(set(names)):
            raise ValueError("route names must be unique")
        return self


class ConsoleUser(_Strict):
    """A console login: a password hash (argon2, from `roomd console hash-password`) or a
    token in a file (for a kiosk or a script); never a plain password in the config."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["viewer", "technician"] = "viewer"
    password_hash: str | None = Field(None, pattern=r"^\$argon2(id|i|d)\$")
    password_hash_file: Path | None = None
    token_file: Path | None = None
    language: Literal["en", "zh-CN"] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ConsoleUser:
        if not (self.password_hash or self.password_hash_file or self.token_file):
            raise ValueError("needs password_hash, password_hash_file or token_file")
        for path in (self.password_hash_file, self.token_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        return self


class ConsoleConfig(HttpConfig):
    """The help-desk web console (roomd/console/). Off unless enabled; 127.0.0.1 unless told."""

    enabled: bool = False
    listen: str = "127.0.0.1:9881"
    users: list[ConsoleUser] = []
    session_idle: Duration = 1800.0  # a session unused this long must log in again
    session_max: Duration = 12 * 3600.0  # and any session after this long
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The console's own address as a browser sees it (behind a reverse proxy): links in
    # notifications, and the Origin a form post must come from.
    public_url: str | None = None

    @model_validator(mode="after")
    def _usable(self) -> ConsoleConfig:
        if self.enabled and not self.users:
            raise ValueError("an enabled console needs at least one user")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        names = [u.name for u in self.users]
        if len(names) != len(set(names)):
            raise ValueError("user names must be unique")
        return self


class RoomConfig(_Strict):
    id: str = Field(pattern=_ID)
    name: str = ""
    # Building / floor for the console's filter; without it, read from the name ("A栋 3层").
    group: str | None = Field(None, max_length=80)
    area_m2: float | None = Field(None, gt=0)
    # For air changes an hour from a measured supply air flow: the volume, or area × height.
    height_m: float | None = Field(None, gt=0, le=30)
    volume_m3: float | None = Field(None, gt=0)
    seats: int | None = Field(None, ge=0)
    profile: str | None = None
    thresholds: dict[str, ThresholdOverride] = {}
    calendar: str | list[str] | None = None
    roster: Path | None = None  # CSV `uid,name`: who a card belongs to
    devices: list[dict[str, Any]] = []

    @property
    def volume(self) -> float | None:
        if self.volume_m3 is not None:
            return self.volume_m3
        if self.area_m2 is not None and self.height_m is not None:
            return self.area_m2 * self.height_m
        return None


class _SiteModel(_Strict):
    site: str = Field(pattern=_ID)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    state_dir: Path = Path("/var/lib/roomd")
    profile: str = "standard"
    poll_jitter: float = Field(0.05, ge=0, le=0.5)
    signins: SigninsConfig = Field(default_factory=SigninsConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    meetings: MeetingsConfig = Field(default_factory=MeetingsConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    # The language people read: the console, reports and notifications (zh-CN or en).
    language: Literal["en", "zh-CN"] = "en"
    # Who may command which room and device, and push bookings (daemon/authz.py). Absent: any
    # broker client that can publish to the command topics is obeyed (a warning at start).
    authorization: AuthorizationConfig | None = None
    # Sharded sites (`roomd run --shard i/n` or `--workers n`): rooms pinned to a shard
    # (room id → shard number, 1-based); every other room goes by a stable hash of its id.
    shard_map: dict[str, int] = {}
    rooms: list[RoomConfig] = Field(min_length=1)


@dataclass(frozen=True)
class Room:
    config: RoomConfig
    devices: tuple[DeviceConfig, ...]
    thresholds: dict[str, Threshold]
    id: str = field(init=False)  # config.id, read in every per-room loop of the daemon

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", self.config.id)

    def device_thresholds(self, device: DeviceConfig) -> dict[str, Threshold]:
        if not device.thresholds:
            return self.thresholds
        merged = dict(self.thresholds)
        for metric, override in device.thresholds.items():
            merged[metric] = merge_threshold(self.thresholds.get(metric), override)
        return merged


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    site: str
    mqtt: MqttConfig
    http: HttpConfig
    state_dir: Path
    profile: str
    poll_jitter: float
    signins: SigninsConfig
    homeassistant: HomeAssistantConfig
    escalation: EscalationConfig
    meetings: MeetingsConfig
    rooms: tuple[Room, ...]
    authorization: AuthorizationConfig | None = None
    shard_map: dict[str, int] = field(default_factory=dict)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    language: str = "en"
    shard: tuple[int, int] | None = None  # (i, n): this instance polls shard i of n

    def room(self, room_id: str) -> Room | None:
        return next((r for r in self.rooms if r.id == room_id), None)

    def label(self, room_id: str, metric: str) -> str | None:
        """The profile's readable name of a metric in a room ("Projector lamp")."""
        room = self.room(room_id)
        threshold = room.thresholds.get(metric) if room is not None else None
        return threshold.label if threshold is not None and threshold.label else None


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        issues = sorted(issues, key=lambda i: (i.file, i.line))  # in file order
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


def default_config_path() -> Path:
    env = os.environ.get("ROOMD_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(DEFAULT_PATHS[0])


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Collector:
    def __init__(self, path: Path, doc: Located) -> None:
        self.file = str(path)
        self.doc = doc
        self.issues: list[ConfigIssue] = []

    def add(self, loc: Loc, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, self.doc.line_of(loc), format_loc(loc), message))

    def add_validation(self, exc: ValidationError, prefix: Loc = ()) -> None:
        for err in exc.errors(include_url=False):
            loc = self._real_loc((*prefix, *err["loc"]))
            kind = err["type"]
            if kind == "extra_forbidden":
                message = "unknown key"
            elif kind == "missing":
                message = "required key is missing"
            else:
                message = err["msg"].removeprefix("Value error, ")
            self.add(loc, message)

    def _real_loc(self, loc: tuple[Any, ...]) -> Loc:
        # pydantic adds union/tag names to loc; keep only parts that index into the document.
        out: list[str | int] = []
        node = self.doc.data
        for part in loc:
            if (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            ):
                out.append(part)
                node = node[part]
            elif isinstance(part, str | int) and not str(part).startswith(("function-", "json-")):
                # a missing or unknown key: name it, then stop descending
                out.append(part)
                node = None
        return tuple(out)

    def expand_env(self, node: Any, loc: Loc = ()) -> Any:
        if isinstance(node, dict):
            return {k: self.expand_env(v, (*loc, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [self.expand_env(v, (*loc, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:

            def sub(match: re.Match[str]) -> str:
                value = os.environ.get(match.group(1))
                if value is None:
                    self.add(loc, f"environment variable {match.group(1)} is not set")
                    return ""
                return value

            return _ENV.sub(sub, node)
        return node


MAX_CONFIG_BYTES = 16 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def load_config(path: Path | str) -> SiteConfig:
    """Read and validate a site config. Raises ConfigError with every problem found."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", _not_found(path, exc))]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue(str(path), 0, "(file)", "larger than 16 MiB")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start : exc.start + 1].hex()
        message = f"not UTF-8: byte 0x{byte} (save the file as UTF-8)"
        raise ConfigError([ConfigIssue(str(path), line, "(file)", message)]) from None
    bad = _CONTROL.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        message = f"control character U+{ord(bad.group()):04X} is not allowed in YAML"
        raise ConfigError([ConfigIssue(str(path), line, "(file)", message)])
    try:
        doc = load_located(text)
    except YamlSyntaxError as exc:
        raise ConfigError([ConfigIssue(str(path), exc.line, "(yaml)", exc.message)]) from None
    return _validate(path, doc)


def _not_found(path: Path, exc: OSError) -> str:
    why = exc.strerror or str(exc)
    if not isinstance(exc, FileNotFoundError) or os.environ.get("ROOMD_CONFIG"):
        return why
    looked = ", ".join(["$ROOMD_CONFIG (not set)", *DEFAULT_PATHS])
    return (
        f"{why}; looked in {looked}. To start, write a config that polls simulated devices: "
        "roomd simulate --write-config roomd.yaml (then roomd run -c roomd.yaml), "
        "or see docs/contract.md §2"
    )


def _validate(path: Path, doc: Located) -> SiteConfig:
    c = _Collector(path, doc)
    if not isinstance(doc.data, dict):
        c.add((), "the config must be a mapping with at least `site` and `rooms`")
        raise ConfigError(c.issues)
    for loc, _line in doc.duplicates:
        c.add(loc, "duplicate key")
    data = c.expand_env(doc.data)
    _duplicate_ids(c, data)
    try:
        site = _SiteModel.model_validate(data)
    except ValidationError as exc:
        c.add_validation(exc)
        # Still check each device, so one run reports every problem.
        for ri, room in enumerate(data.get("rooms") or [] if isinstance(data, dict) else []):
            if isinstance(room, dict) and isinstance(room.get("devices"), list):
                for di, device in enumerate(room["devices"]):
                    _device(c, device, ("rooms", ri, "devices", di))
        raise ConfigError(c.issues) from None

    _check_secret_files(c, site.mqtt)
    if site.authorization is not None:
        for name, principal in site.authorization.principals.items():
            key = principal.key_file
            if key is not None and not os.access(key, os.R_OK):
                c.add(("authorization", "principals", name, "key_file"), f"cannot read {key}")
        for ri, rule in enumerate(site.authorization.rules):
            unknown = [
                cmd
                for cmd in rule.site_commands
                if not any(
                    fnmatch.fnmatchcase(k, cmd) for k in ("ack", "reload", "status", "check")
                )
            ]
            if unknown:
                c.add(
                    ("authorization", "rules", ri, "site_commands"),
                    f"no site command {unknown[0]!r} (known: ack, reload, status, check)",
                )
    secret = site.signins.secret_file
    if secret is not None and not os.access(secret, os.R_OK):
        c.add(("signins", "secret_file"), f"cannot read {secret}")
    rooms: list[Room] = []
    for ri, room in enumerate(site.rooms):
        rloc: Loc = ("rooms", ri)
        profile_name = room.profile or site.profile
        try:
            profile = load_profile(profile_name)
        except ProfileError as exc:
            c.add((*rloc, "profile") if room.profile else ("profile",), str(exc))
            continue
        known = set(profile.thresholds) | KNOWN_METRICS | _produced(room.devices)
        _check_overrides(c, room.thresholds, profile.thresholds, (*rloc, "thresholds"), known)
        try:
            thresholds = profile.with_overrides(room.thresholds)
        except ValidationError as exc:
            c.add_validation(exc, (*rloc, "thresholds"))
            continue
        devices: list[DeviceConfig] = []
        placed: list[tuple[int, DeviceConfig]] = []  # with the index in the file
        for di, raw in enumerate(room.devices):
            dloc: Loc = (*rloc, "devices", di)
            device = _device(c, raw, dloc)
            if device is None:
                continue
            if device.id == ROOM_DEVICE:
                c.add((*dloc, "id"), f"{ROOM_DEVICE!r} is reserved for room-level readings")
            _check_overrides(c, device.thresholds, thresholds, (*dloc, "thresholds"), known)
            devices.append(device)
            placed.append((di, device))
        ids = {d.id for d in devices}
        for di, device in placed:
            if device.backup is not None and (
                device.backup == device.id or device.backup not in ids
            ):
                c.add(
                    (*rloc, "devices", di, "backup"),
                    f"no other device {device.backup!r} in room {room.id!r} to fail over to",
                )
        if room.roster is not None and (problem := check_roster(room.roster)):
            c.add((*rloc, "roster"), problem)
        rooms.append(Room(config=room, devices=tuple(devices), thresholds=thresholds))
    _check_serial_lines(c, rooms)
    if c.issues:
        raise ConfigError(c.issues)
    return SiteConfig(
        path=path,
        site=site.site,
        mqtt=site.mqtt,
        http=site.http,
        state_dir=site.state_dir,
        profile=site.profile,
        poll_jitter=site.poll_jitter,
        signins=site.signins,
        homeassistant=site.homeassistant,
        escalation=site.escalation,
        meetings=site.meetings,
        rooms=tuple(rooms),
        authorization=site.authorization,
        shard_map=dict(site.shard_map),
        console=site.console,
        notifications=site.notifications,
        language=site.language,
    )


def _check_serial_lines(c: _Collector, rooms: list[Room]) -> None:
    """One serial port is one line: one baud rate, parity, stop bits and byte size for every
    device on it, and readers and RS-232 projectors share it with nobody."""
    first: dict[str, tuple[str, tuple[Any, ...] | None, Loc]] = {}
    for ri, room in enumerate(rooms):
        for device in room.devices:
            line = device.serial_line()
            if line is None:
                continue
            port, settings = line
            di = next(i for i, raw in enumerate(room.config.devices) if raw.get("id") == device.id)
            loc: Loc = ("rooms", ri, "devices", di, "port")
            name = f"{room.id}/{device.id}"
            if port not in first:
                first[port] = (name, settings, loc)
                continue
            other, other_settings, _ = first[port]
            if settings is None or other_settings is None:
                c.add(loc, f"{port} is already used by {other}; this device cannot share it")
            elif settings != other_settings:
                c.add(
                    loc,
                    f"{port} is one RS-485 line: {name} wants {_line(settings)} but {other} "
                    f"wants {_line(other_settings)}; give both the same baudrate/parity/"
                    "stopbits/bytesize",
                )


def _line(settings: tuple[Any, ...]) -> str:
    baud, parity, stop, size = settings
    return f"{baud} {size}{parity}{stop}"


def _duplicate_ids(c: _Collector, data: Any) -> None:
    """Duplicate room and device ids, found on the raw document so that they are reported
    with every other problem, whatever else is wrong."""
    rooms = data.get("rooms") if isinstance(data, dict) else None
    if not isinstance(rooms, list):
        return
    seen_rooms: dict[str, int] = {}
    for ri, room in enumerate(rooms):
        if not isinstance(room, dict):
            continue
        rid = room.get("id")
        if isinstance(rid, str):
            if rid in seen_rooms:
                c.add(
                    ("rooms", ri, "id"),
                    f"duplicate room id {rid!r} (also rooms[{seen_rooms[rid]}])",
                )
            seen_rooms.setdefault(rid, ri)
        devices = room.get("devices")
        seen: dict[str, int] = {}
        for di, dev in enumerate(devices if isinstance(devices, list) else []):
            did = dev.get("id") if isinstance(dev, dict) else None
            if not isinstance(did, str):
                continue
            if did in seen:
                c.add(
                    ("rooms", ri, "devices", di, "id"),
                    f"duplicate device id {did!r} in room {rid!r} (also devices[{seen[did]}])",
                )
            seen.setdefault(did, di)


def _device(c: _Collector, raw: Any, loc: Loc) -> DeviceConfig | None:
    if not isinstance(raw, dict):
        c.add(loc, "a device must be a mapping with at least `id` and `driver`")
        return None
    kind = raw.get("driver")
    if kind is None:
        c.add((*loc, "driver"), f"required key is missing (one of: {', '.join(known_drivers())})")
        return None
    cls = driver_class(str(kind))
    if cls is None:
        c.add((*loc, "driver"), f"unknown driver {kind!r} (known: {', '.join(known_drivers())})")
        return None
    try:
        return cls.config_model.model_validate(raw)
    except ValidationError as exc:
        c.add_validation(exc, loc)
        return None


def _produced(devices: list[dict[str, Any]]) -> set[str]:
    """Metric names the room's devices produce (a driver built from its config does no I/O)."""
    out: set[str] = set()
    for raw in devices:
        cls = driver_class(str(raw.get("driver"))) if isinstance(raw, dict) else None
        if cls is None:
            continue
        try:
            out.update(cls(cls.config_model.model_validate(raw), DriverContext()).metrics)
        except Exception:  # reported against the device itself
            continue
    return out


def _check_overrides(
    c: _Collector,
    overrides: dict[str, ThresholdOverride],
    base: dict[str, Threshold],
    loc: Loc,
    known: set[str],
) -> None:
    for metric, override in overrides.items():
        if metric not in known:
            close = difflib.get_close_matches(metric, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            c.add(
                (*loc, metric),
                f"unknown metric {metric!r}{hint} (no device here produces it, so this "
                f"threshold would never apply)",
            )
            continue
        if (
            metric not in base
            and override.min is None
            and override.max is None
            and not override.states
        ):
            c.add(
                (*loc, metric),
                f"no threshold {metric!r} in the profile to override; give `min` or `max` "
                f"to add one (known: {', '.join(sorted(base))})",
            )


def _check_secret_files(c: _Collector, mqtt: MqttConfig) -> None:
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value: Path | None = getattr(mqtt, key)
        if value is not None and not os.access(value, os.R_OK):
            c.add(("mqtt", key), f"cannot read {value}")
    if mqtt.password_file is not None and mqtt.password is not None:
        c.add(("mqtt", "password"), "give either password or password_file, not both")


def dump_issues(exc: ConfigError) -> str:
    return "\n".join(str(i) for i in exc.issues)
