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
    # pyarrow has no profile argument: the profile's keys are handed over explicitly.
    assert "PROFILEKEY" in repr(pickle.loads(pickle.dumps(fs)).__reduce__())
    assert SECRET not in repr(s) and SECRET not in s.describe()


@pytest.mark.s3
@pytest.mark.timeout(60)
def test_boto3_writes_are_visible_to_pyarrow(s3_prefix):
    bucket, key = storage.split_s3(storage.join(s3_prefix, "hello.txt"))
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=b"hi")
    fs, root = storage.filesystem(s3_prefix)
    with fs.open_input_stream(f"{root}/hello.txt") as f:
        assert f.read() == b"hi"
