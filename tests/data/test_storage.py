"""Storage settings: AWS-style resolution, one factory for pyarrow and boto3, no secrets shown."""

import pickle

import pytest
from botocore import UNSIGNED
from pyarrow import fs as pafs

from tnn.data import storage
from tnn.errors import ConfigError
from tnn.data.storage import StorageSettings

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"


def test_resolution_order_from_env():
    env = {"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3only:2",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-central-1", "AWS_PROFILE": "p"}
    s = StorageSettings.from_env(env)
    assert (s.endpoint_url, s.region, s.profile) == ("http://s3only:2", "eu-central-1", "p")
    s = StorageSettings.from_env({"AWS_ENDPOINT_URL": "http://generic:1",
                                  "AWS_DEFAULT_REGION": "eu-west-1"})
    assert (s.endpoint_url, s.region, s.profile) == ("http://generic:1", "eu-west-1", None)
    s = StorageSettings.from_env(env, endpoint_url="https://explicit:3", region=None)
    assert s.endpoint_url == "https://explicit:3" and s.region == "eu-central-1"
    assert StorageSettings.from_env({}) == StorageSettings()


def test_retry_budget_from_env_reaches_both_clients():
    s = StorageSettings.from_env({"AWS_MAX_ATTEMPTS": "4"})
    assert s.max_attempts == 4 and StorageSettings().max_attempts == storage.DEFAULT_ATTEMPTS
    client = storage.s3_client(StorageSettings(max_attempts=4, region="us-east-1"))
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}
    assert isinstance(storage.s3_filesystem(s), pafs.S3FileSystem)
    with pytest.raises(ConfigError, match="AWS_MAX_ATTEMPTS must be a positive integer; got 'x'"):
        StorageSettings.from_env({"AWS_MAX_ATTEMPTS": "x"})
    with pytest.raises(ConfigError, match="max_attempts must be >= 1"):
        StorageSettings(max_attempts=0)


def test_bad_endpoint_and_uris():
    with pytest.raises(ConfigError, match="endpoint_url must start with http:// or https://"):
        StorageSettings(endpoint_url="127.0.0.1:9000")
    with pytest.raises(ConfigError, match="has no bucket"):
        storage.filesystem("s3:///prefix")
    with pytest.raises(ConfigError, match="unsupported URI scheme"):
        storage.filesystem("gs://bucket/x")
    assert storage.split_s3("s3://b/a/b/") == ("b", "a/b")
    assert storage.join("s3://b/p/", "x") == "s3://b/p/x"


def test_local_filesystem(tmp_path):
    fs, path = storage.filesystem(str(tmp_path / "d"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "d")
    assert storage.filesystem(f"file://{tmp_path}")[1] == str(tmp_path)


def test_repr_and_describe_never_show_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:{SECRET}@127.0.0.1:9000")
    s = StorageSettings.from_env()
    for text in (repr(s), str(s), s.describe()):
        assert SECRET not in text and "127.0.0.1:9000" in text
    assert SECRET not in repr(StorageSettings.from_env(profile="p", anonymous=True))


def test_s3_factory_builds_both_clients_from_the_same_settings():
    s = StorageSettings(endpoint_url="http://127.0.0.1:9999", region="eu-west-3")
    client = storage.s3_client(s)
    assert client.meta.endpoint_url == "http://127.0.0.1:9999"
    assert client.meta.region_name == "eu-west-3"
    fs, path = storage.filesystem("s3://bucket/some/prefix/", s)
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    assert fs.region == "eu-west-3"
    anon = storage.s3_client(StorageSettings(anonymous=True))
    assert anon.meta.config.signature_version is UNSIGNED


def _write_profile(tmp_path, monkeypatch):
    (tmp_path / "credentials").write_text(
        "[tnnprof]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = " + SECRET + "\n")
    (tmp_path / "config").write_text("[profile tnnprof]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)


def test_profile_feeds_boto3_and_pyarrow_alike(tmp_path, monkeypatch):
    _write_profile(tmp_path, monkeypatch)
    s = StorageSettings.from_env(profile="tnnprof")
    client = storage.s3_client(s)
    assert client.meta.region_name == "ap-south-1"
    assert client._request_signer._credentials.access_key == "PROFILEKEY"
    fs = storage.s3_filesystem(s)
    assert fs.region == "ap-south-1"
    assert SECRET not in repr(s) and SECRET not in s.describe()


def test_pickled_filesystem_ships_the_profile_name_never_its_keys(tmp_path, monkeypatch):
    """What Ray sends to workers (a pickled filesystem) holds no key; where it is unpickled
    the profile's credentials are resolved again (pyarrow has no profile argument)."""
    _write_profile(tmp_path, monkeypatch)
    s = StorageSettings.from_env(profile="tnnprof", endpoint_url=f"http://u:{SECRET}@h:9",
                                 max_attempts=4)
    fs = storage.s3_filesystem(s, bucket="b")
    shipped = pickle.dumps(fs)
    for secret in (SECRET, "PROFILEKEY"):
        assert secret.encode() not in shipped
    back = pickle.loads(shipped)
    assert isinstance(back, pafs.S3FileSystem) and back.region == "ap-south-1"
    assert pickle.loads(shipped).__reduce__()[1][0].profile == "tnnprof"
    # the rebuilt filesystem signs with the profile's keys again (pyarrow's own pickle shows
    # them: the reason the shipped form is ours)
    assert "PROFILEKEY" in repr(pafs.S3FileSystem.__reduce__(back))
    assert pickle.loads(shipped).__reduce__()[1][0].max_attempts == 4


@pytest.mark.s3
@pytest.mark.timeout(60)
def test_boto3_writes_are_visible_to_pyarrow(s3_prefix):
    bucket, key = storage.split_s3(storage.join(s3_prefix, "hello.txt"))
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"hi")
    fs, root = storage.filesystem(s3_prefix)
    with fs.open_input_stream(f"{root}/hello.txt") as f:
        assert f.read() == b"hi"


@pytest.fixture
def eu_bucket(tmp_path, monkeypatch):
    """A moto server of our own with a bucket created in eu-west-1, and an environment with
    no region anywhere (variables, config file); (settings, bucket)."""
    from tests.support import start_moto, stop
    proc, endpoint = start_moto(tmp_path / "moto.log")
    try:
        (tmp_path / "empty").write_text("")
        for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "region-test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "region-test")
        import boto3
        boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1").create_bucket(
            Bucket="tnn-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        monkeypatch.setattr(storage, "_REGIONS", {})
        yield StorageSettings.from_env(endpoint_url=endpoint), "tnn-eu"
    finally:
        stop(proc)


@pytest.mark.timeout(60)
def test_region_comes_from_the_bucket_once_for_pyarrow_and_boto3(eu_bucket, monkeypatch):
    settings, bucket = eu_bucket
    asked = []
    ask = storage._ask_region
    monkeypatch.setattr(storage, "_ask_region", lambda b, s: asked.append(b) or ask(b, s))
    assert settings.region is None
    fs, root = storage.filesystem(f"s3://{bucket}/data", settings)
    assert fs.region == "eu-west-1" and root == f"{bucket}/data"
    client = storage.s3_client(settings, bucket=bucket)
    assert client.meta.region_name == "eu-west-1"
    assert storage.s3_filesystem(settings, bucket).region == "eu-west-1"
    assert asked == [bucket]  # once per bucket, then cached
    with fs.open_output_stream(f"{root}/x.txt") as f:  # and it talks to the store
        f.write(b"eu")
    body = client.get_object(Bucket=bucket, Key="data/x.txt")["Body"].read()
    assert body == b"eu" and pickle.loads(pickle.dumps(fs)).region == "eu-west-1"
    # an explicit region wins, without asking
    explicit = StorageSettings.from_env(endpoint_url=settings.endpoint_url, region="us-west-2")
    assert storage.filesystem(f"s3://{bucket}/data", explicit)[0].region == "us-west-2"
    assert storage.s3_client(explicit, bucket=bucket).meta.region_name == "us-west-2"
    assert asked == [bucket]


@pytest.mark.timeout(60)
def test_region_unknown_bucket_or_store_falls_back_uncached(eu_bucket):
    settings, _ = eu_bucket
    # a missing bucket: no region header, the default, and nothing cached (it may be created)
    assert storage.bucket_region("no-such-bucket", settings) == storage.DEFAULT_REGION
    assert storage._REGIONS == {}
    down = StorageSettings(endpoint_url="http://127.0.0.1:1", connect_timeout=0.5)
    assert storage.bucket_region("tnn-eu", down) == storage.DEFAULT_REGION
    assert ("http://127.0.0.1:1", "tnn-eu") not in storage._REGIONS
