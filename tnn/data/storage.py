"""Where shards live: local paths or S3 (and S3-compatible stores), configured the AWS way.

One settings object feeds both clients, so the pyarrow filesystem (reads, listings, deletes)
and the boto3 client (single-PUT atomic writes) always talk to the same store as the same user.

Resolution, first match wins:
    endpoint_url  field > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL > the AWS default
    region        field > AWS_REGION > AWS_DEFAULT_REGION > the profile's region > the
                  bucket's own region (`bucket_region`: the `x-amz-bucket-region` header of a
                  HeadBucket, else `pyarrow.fs.resolve_s3_region` on AWS; asked once per
                  endpoint and bucket, then cached) > us-east-1
    profile       field > AWS_PROFILE
    retries       field > AWS_MAX_ATTEMPTS > 10 attempts per request with exponential backoff
                  (pyarrow; boto3, whose backoff is jittered, gets twice as many): a ~10 s
                  outage of the store is ridden out, longer ones fail after the budget
    credentials   never held here: the standard chain (AWS_ACCESS_KEY_ID/..., shared files,
                  instance metadata); for an explicitly named profile they are resolved
                  through boto3 and handed to pyarrow, which has no profile argument. A
                  pickled filesystem (what Ray ships to workers) holds the settings and the
                  region, never keys: the worker resolves the profile's credentials itself.
`repr` and `describe` show no credentials (and strip any user:password from the endpoint).
pyarrow and boto3 are imported inside the functions that need them, so importing this module
stays cheap and framework-free.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from tnn.errors import ConfigError, DataError

DEFAULT_REGION = "us-east-1"
DEFAULT_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    """How to reach S3. Every field None means "whatever the AWS environment says"."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for an S3-compatible store
    region: str | None = None
    profile: str | None = None  # a profile in ~/.aws/config / credentials
    anonymous: bool = False  # unsigned requests (public buckets)
    max_attempts: int = DEFAULT_ATTEMPTS  # per request, first try included
    connect_timeout: float = 5.0  # seconds

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.connect_timeout <= 0:
            raise ConfigError(f"storage: max_attempts must be >= 1 and connect_timeout > 0; got "
                              f"{self.max_attempts} and {self.connect_timeout}")
        if self.endpoint_url and urlsplit(self.endpoint_url).scheme not in ("http", "https"):
            raise ConfigError(f"storage: endpoint_url must start with http:// or https://; "
                              f"got {_redact(self.endpoint_url)!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **fields) -> "StorageSettings":
        """Fill unset fields from the AWS environment variables (see the module docstring)."""
        env = os.environ if env is None else env
        pick = lambda *names: next((env[n] for n in names if env.get(n)), None)  # noqa: E731
        resolved = {"endpoint_url": pick("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                    "region": pick("AWS_REGION", "AWS_DEFAULT_REGION"),
                    "profile": pick("AWS_PROFILE")}
        attempts = pick("AWS_MAX_ATTEMPTS")
        if attempts is not None:
            if not attempts.strip().isdigit():
                raise ConfigError(f"AWS_MAX_ATTEMPTS must be a positive integer; got {attempts!r}")
            resolved["max_attempts"] = int(attempts)
        resolved.update({k: v for k, v in fields.items() if v is not None})
        return cls(**resolved)

    def __repr__(self) -> str:
        return (f"StorageSettings(endpoint_url={_redact(self.endpoint_url)!r}, "
                f"region={self.region!r}, profile={self.profile!r}, anonymous={self.anonymous}, "
                f"max_attempts={self.max_attempts})")

    def describe(self) -> str:
        """One log-safe line: endpoint, region, profile (never credentials)."""
        return (f"endpoint={_redact(self.endpoint_url) or 'aws-default'} "
                f"region={self.region or 'auto'} profile={self.profile or '-'}"
                + (" anonymous" if self.anonymous else ""))


def _redact(url: str | None) -> str | None:
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, name: str) -> str:
    """`join('s3://b/p/', 'x')` -> `'s3://b/p/x'`; local paths likewise."""
    return str(uri).rstrip("/") + "/" + name


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/path` -> `('bucket', 'key/path')`."""
    bucket, _, key = str(uri)[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"storage: {uri!r} has no bucket (expected s3://bucket/prefix)")
    return bucket, key.strip("/")


def _session(settings: StorageSettings):
    import boto3
    return boto3.Session(profile_name=settings.profile) if settings.profile else boto3.Session()


_REGIONS: dict[tuple[str | None, str], str] = {}  # (endpoint, bucket) -> the bucket's region
_REGIONS_LOCK = threading.Lock()


def configured_region(settings: StorageSettings, session=None) -> str | None:
    """The region set in the settings (field, AWS_REGION, ...) or by the profile, else None."""
    return settings.region or (session.region_name if session else None)


def bucket_region(bucket: str, settings: StorageSettings | None = None) -> str:
    """The region to talk to `bucket` in: a configured one wins; else the bucket's own,
    asked once per (endpoint, bucket) and cached; us-east-1 when the store does not say."""
    settings = settings or StorageSettings.from_env()
    configured = configured_region(settings, _session(settings))
    if configured:
        return configured
    key = (settings.endpoint_url, bucket)
    with _REGIONS_LOCK:
        if key not in _REGIONS:
            found = _ask_region(bucket, settings)
            if found is None:  # unreachable: not cached, the request itself will say why
                return DEFAULT_REGION
            _REGIONS[key] = found
        return _REGIONS[key]


def _ask_region(bucket: str, settings: StorageSettings) -> str | None:
    """HeadBucket's `x-amz-bucket-region` (sent with 200, 301 and 403 alike); on AWS without
    it, `pyarrow.fs.resolve_s3_region`; None when neither answers."""
    from botocore.exceptions import BotoCoreError, ClientError
    client = _client(settings, DEFAULT_REGION, attempts=2)
    try:
        headers = client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]
    except ClientError as err:
        headers = err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except BotoCoreError:
        headers = {}
    if headers.get("x-amz-bucket-region"):
        return headers["x-amz-bucket-region"]
    if settings.endpoint_url is None:
        from pyarrow import fs
        try:
            return fs.resolve_s3_region(bucket)
        except OSError:
            return None
    return None


def _client(settings: StorageSettings, region: str, attempts: int | None = None):
    from botocore import UNSIGNED
    from botocore.config import Config
    # boto3 waits random() * 2**n s between attempts (full jitter, at most 20 s), pyarrow 25 ms *
    # 2**n: with the same count boto3 sometimes gave up within 10 s, so it gets twice the count
    config = Config(retries={"total_max_attempts": attempts or 2 * settings.max_attempts,
                             "mode": "standard"},
                    connect_timeout=settings.connect_timeout,
                    **({"signature_version": UNSIGNED} if settings.anonymous else {}))
    return _session(settings).client("s3", endpoint_url=settings.endpoint_url, config=config,
                                     region_name=region)


def s3_client(settings: StorageSettings | None = None, bucket: str | None = None):
    """A boto3 S3 client built from `settings` (default: the environment), in `bucket`'s
    region when given and no region is configured (`bucket_region`)."""
    settings = settings or StorageSettings.from_env()
    region = bucket_region(bucket, settings) if bucket else \
        configured_region(settings, _session(settings)) or DEFAULT_REGION
    return _client(settings, region)


def s3_filesystem(settings: StorageSettings | None = None, bucket: str | None = None):
    """A `pyarrow.fs.S3FileSystem` built from `settings` (default: the environment), in
    `bucket`'s region when given and no region is configured (`bucket_region`)."""
    settings = settings or StorageSettings.from_env()
    region = bucket_region(bucket, settings) if bucket else \
        configured_region(settings, _session(settings)) or DEFAULT_REGION
    return _s3(settings, region)


def _s3(settings: StorageSettings, region: str):
    """`S3FileSystem(retry_strategy=AwsStandardS3RetryStrategy(attempts), ...)` that pickles
    as (settings without secrets, region) and is rebuilt from them where it is unpickled:
    pyarrow's own pickle drops `retry_strategy` (a copy sent to Ray Train's workers retried 3
    times) and would carry the keys of a named profile to every worker."""
    from pyarrow import fs
    kwargs: dict = {"anonymous": settings.anonymous, "connect_timeout": settings.connect_timeout,
                    "region": region}
    if settings.endpoint_url:
        parts = urlsplit(settings.endpoint_url)
        kwargs.update(scheme=parts.scheme, endpoint_override=parts.netloc.rpartition("@")[2])
    if settings.profile and not settings.anonymous:
        creds = _session(settings).get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                          session_token=frozen.token)
    shipped = dataclasses.replace(settings, endpoint_url=_redact(settings.endpoint_url))

    class S3FileSystem(fs.S3FileSystem):
        def __reduce__(self):
            return _s3, (shipped, region)

    return S3FileSystem(retry_strategy=fs.AwsStandardS3RetryStrategy(settings.max_attempts),
                        **kwargs)


def filesystem(uri: str, settings: StorageSettings | None = None):
    """`(pyarrow FileSystem, path inside it)` for `s3://bucket/prefix` or a local path."""
    from pyarrow import fs
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_filesystem(settings, bucket), f"{bucket}/{key}".rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise ConfigError(f"storage: unsupported URI scheme in {uri!r}; use s3:// or a path")
    return fs.LocalFileSystem(), os.path.abspath(uri)


def temp_path(uri: str, name: str) -> str:
    """A local temp file for an object to be published as `<uri>/name`: beside the target
    for local paths (so `os.replace` is atomic), in the system temp directory for S3."""
    if not is_s3(uri):
        return os.path.join(filesystem(uri)[1], f".{name}.tmp-{os.getpid()}")
    fd, path = tempfile.mkstemp(prefix=".tnn-", suffix=f"-{name}")
    os.close(fd)
    return path


def publish(tmp: str, uri: str, client=None) -> None:
    """Move a finished local file to `uri` atomically: `os.replace` locally, one PUT on S3
    (the object appears whole or not at all); the temp file is gone afterwards."""
    if not is_s3(uri):
        os.replace(tmp, filesystem(uri)[1])
        return
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, key = split_s3(uri)
    client = client or s3_client(bucket=bucket)
    try:
        with open(tmp, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f)
    except (BotoCoreError, ClientError) as err:
        raise DataError(f"{uri}: upload failed after {_attempts(client)} attempt(s): {err}") from None
    finally:
        os.unlink(tmp)


def check_bucket(client, uri: str) -> None:
    """Raise `ConfigError` naming the bucket when it does not exist or is not accessible."""
    from botocore.exceptions import BotoCoreError, ClientError
    bucket = split_s3(uri)[0]
    try:
        client.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as err:
        raise ConfigError(f"{uri}: bucket {bucket!r} is not reachable after {_attempts(client)} "
                          f"attempt(s) ({err})") from None


def _attempts(client) -> int | str:
    return client.meta.config.retries.get("total_max_attempts", "?")
