"""infra/ (Terraform, for LocalStack and AWS) and the embedded provisioner must build the same lake.

The embedded AWS and `make provision` (embedded or LocalStack) create the lake through
provision.py's request builders; `tflocal`/LocalStack and AWS get `infra/*.tf`. Nothing runs
Terraform here (no providers can be downloaded), so these tests parse the HCL and compare it with
those builders and the Firehose role's policies: a rename, a prefix, a shard count or a grant
changed on one side only fails here. They also pin the hardening and the docker-compose LocalStack.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hcl2
import polars as pl
import pytest
import yaml

from deathmetal_lake.catalog import CatalogTable, lake_catalog
from deathmetal_lake.datasets import DATASETS, BufferingHints, Dataset
from deathmetal_lake.local_aws import provision
from deathmetal_lake.local_aws.provision import delivery_stream_request, kinesis_stream_request
from deathmetal_lake.settings import LOCALSTACK_ENDPOINT, LakeSettings
from deathmetal_lake_tools.localstack import host as localstack_host

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE = REPO / "docker-compose.yml"
# The declared default, not LakeSettings().bucket: LAKE_BUCKET in the environment must not matter.
CONTRACT_BUCKET: str = LakeSettings.model_fields["bucket"].default
# Names and prefixes do not depend on the region; the builders just need one.
REGION = "us-east-1"

# The attribute that holds a resource's name, for resolving `aws_x.y.arn` to what it names.
NAME_ATTRIBUTE = {"aws_s3_bucket": "bucket"}

Terraform = dict[str, list[Any]]


# --- Loading -------------------------------------------------------------------------------------


def _clean(node: Any) -> Any:
    """Drop python-hcl2's `__meta__` keys and the quotes some versions keep on labels/strings."""
    if isinstance(node, dict):
        return {
            _unquote(key): _clean(value)
            for key, value in node.items()
            if not (key.startswith("__") and key.endswith("__"))
        }
    if isinstance(node, list):
        return [_clean(value) for value in node]
    return _unquote(node) if isinstance(node, str) else node


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def load_terraform(directory: Path = INFRA) -> Terraform:
    """All `*.tf` files of `directory` merged as Terraform does: top-level blocks concatenate."""
    try:  # python-hcl2 >= 8 keeps string quotes unless told not to; older ones take no options
        options = hcl2.SerializationOptions(
            strip_string_quotes=True, explicit_blocks=False, with_comments=False
        )
    except (AttributeError, TypeError):
        options = None
    merged: Terraform = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open(encoding="utf-8") as file:
            parsed = hcl2.load(file, serialization_options=options) if options else hcl2.load(file)
        for kind, blocks in _clean(parsed).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def blocks_of(tf: Terraform, kind: str, type_: str) -> dict[str, dict[str, Any]]:
    """`{name: body}` of every `kind "type_" "name"` block (kind: resource or data)."""
    found: dict[str, dict[str, Any]] = {}
    for block in tf.get(kind, []):
        found.update(block.get(type_, {}))
    return found


def named_blocks(tf: Terraform, kind: str) -> dict[str, dict[str, Any]]:
    """`{name: body}` of `variable "name"` / `output "name"` blocks."""
    found: dict[str, dict[str, Any]] = {}
    for block in tf.get(kind, []):
        found.update(block)
    return found


def local_value(tf: Terraform, name: str) -> Any:
    for block in tf.get("locals", []):
        if name in block:
            return block[name]
    return None


def variable_default(tf: Terraform, name: str) -> Any:
    variable = named_blocks(tf, "variable").get(name)
    return f"<no variable {name}>" if variable is None else variable.get("default")


# --- Evaluating the few expression forms main.tf uses ---------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
_REFERENCE = re.compile(r"(aws_\w+)\.(\w+)(\[each\.key\])?\.(?:arn|id|name|bucket)")


def evaluate(tf: Terraform, value: Any, key: str | None = None, each: dict | None = None) -> Any:
    """Value of an attribute for the `for_each` element `key` (its map value `each`).

    A reference to another resource evaluates to that resource's name, so ARNs compare by name.
    Anything else stays visibly unresolved (`<...>`) and so shows up as a mismatch.
    """
    if not isinstance(value, str):
        return value
    whole = re.fullmatch(r"\$\{([^{}]*)\}", value)
    if whole:
        return _resolve(tf, whole.group(1).strip(), key, each or {})
    return _INTERPOLATION.sub(
        lambda match: str(_resolve(tf, match.group(1).strip(), key, each or {})), value
    )


def _resolve(tf: Terraform, expression: str, key: str | None, each: dict) -> Any:
    if expression == "each.key" and key is not None:
        return key
    if match := re.fullmatch(r"each\.value\.(\w+)", expression):
        return each.get(match.group(1), f"<no each.value.{match.group(1)}>")
    if match := re.fullmatch(r"var\.(\w+)", expression):
        return variable_default(tf, match.group(1))
    if match := _REFERENCE.fullmatch(expression):
        type_, name, keyed = match.group(1), match.group(2), match.group(3)
        target = blocks_of(tf, "resource", type_).get(name)
        if target is None:
            return f"<no resource {type_}.{name}>"
        if ("for_each" in target) != bool(keyed):
            return f"<{expression}: for_each and [each.key] disagree>"
        return evaluate(tf, target.get(NAME_ATTRIBUTE.get(type_, "name")), key, each)
    return f"<unresolved {expression}>"


def _only(blocks: list[dict]) -> dict:
    """The single nested block (`stream_mode_details { }`); empty if absent or repeated."""
    return blocks[0] if isinstance(blocks, list) and len(blocks) == 1 else {}


# --- The comparison ------------------------------------------------------------------------------


def registry_view(datasets: Sequence[Dataset], bucket: str) -> dict[str, dict[str, Any]]:
    """Per dataset, what the embedded provisioner asks AWS for (from provision.py's builders)."""
    view = {}
    for dataset in datasets:
        stream = kinesis_stream_request(dataset)
        firehose = delivery_stream_request(dataset, bucket, REGION)
        source = firehose["KinesisStreamSourceConfiguration"]
        s3 = firehose["ExtendedS3DestinationConfiguration"]
        view[dataset.name] = {
            "stream_name": stream["StreamName"],
            "shard_count": stream["ShardCount"],
            "stream_mode": stream["StreamModeDetails"]["StreamMode"],
            "firehose_name": firehose["DeliveryStreamName"],
            "source_type": firehose["DeliveryStreamType"],
            "source_stream": source["KinesisStreamARN"].split(":stream/", 1)[-1],
            "source_role": source["RoleARN"].split(":role/", 1)[-1],
            "destination_role": s3["RoleARN"].split(":role/", 1)[-1],
            "bucket": s3["BucketARN"].removeprefix("arn:aws:s3:::"),
            "prefix": s3["Prefix"],
            "error_output_prefix": s3["ErrorOutputPrefix"],
            "buffering_size_mb": s3["BufferingHints"]["SizeInMBs"],
            "buffering_interval_seconds": s3["BufferingHints"]["IntervalInSeconds"],
            "compression_format": s3["CompressionFormat"],
        }
    return view


def _per_dataset_resource(tf: Terraform, type_: str, problems: list[str]) -> dict[str, Any]:
    """The one `for_each = local.datasets` declaration of `type_` (one declaration, not copies)."""
    declared = blocks_of(tf, "resource", type_)
    looping = {
        name: body for name, body in declared.items() if body.get("for_each") == "${local.datasets}"
    }
    if len(declared) != 1 or len(looping) != 1:
        problems.append(
            f"{type_}: expected one declaration with for_each = local.datasets, "
            f"found {sorted(declared)} ({sorted(looping)} loop over local.datasets)"
        )
    return next(iter(looping.values()), {})


def terraform_view(tf: Terraform) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per dataset, what `terraform apply` would create; plus structural problems found."""
    problems: list[str] = []
    datasets = local_value(tf, "datasets")
    if not isinstance(datasets, dict):
        return {}, ["locals: no `datasets` map"]
    stream = _per_dataset_resource(tf, "aws_kinesis_stream", problems)
    firehose = _per_dataset_resource(tf, "aws_kinesis_firehose_delivery_stream", problems)
    source = _only(firehose.get("kinesis_source_configuration", []))
    s3 = _only(firehose.get("extended_s3_configuration", []))
    view = {}
    for key, each in datasets.items():

        def value(body: dict, attribute: str, key: str = key, each: dict = each) -> Any:
            return evaluate(tf, body.get(attribute, f"<no {attribute}>"), key, each)

        view[key] = {
            "stream_name": value(stream, "name"),
            "shard_count": value(stream, "shard_count"),
            "stream_mode": value(_only(stream.get("stream_mode_details", [])), "stream_mode"),
            "firehose_name": value(firehose, "name"),
            "source_type": "KinesisStreamAsSource" if source else "DirectPut",
            "source_stream": value(source, "kinesis_stream_arn"),
            "source_role": value(source, "role_arn"),
            "destination_role": value(s3, "role_arn"),
            "bucket": value(s3, "bucket_arn"),
            "prefix": value(s3, "prefix"),
            "error_output_prefix": value(s3, "error_output_prefix"),
            "buffering_size_mb": value(s3, "buffering_size"),
            "buffering_interval_seconds": value(s3, "buffering_interval"),
            "compression_format": value(s3, "compression_format"),
        }
        if firehose.get("destination") != "extended_s3":
            problems.append(f"{key}: firehose destination is {firehose.get('destination')!r}")
    return view, problems


def infra_mismatches(
    tf: Terraform, datasets: Sequence[Dataset] = DATASETS, bucket: str = CONTRACT_BUCKET
) -> list[str]:
    """Every way the Terraform and the embedded provisioner disagree; empty when they agree."""
    actual, mismatches = terraform_view(tf)
    expected = registry_view(datasets, bucket)
    for name in sorted(expected.keys() - actual.keys()):
        mismatches.append(f"{name}: in the registry but not in infra/ local.datasets")
    for name in sorted(actual.keys() - expected.keys()):
        mismatches.append(f"{name}: in infra/ local.datasets but not in the registry")
    for name in sorted(expected.keys() & actual.keys()):
        for field, wanted in expected[name].items():
            got = actual[name][field]
            if got != wanted:
                mismatches.append(f"{name}: {field}: terraform {got!r} != registry {wanted!r}")
    return mismatches


# --- IAM -----------------------------------------------------------------------------------------

# The only wildcard allowed: objects under the two prefixes Firehose writes.
ALLOWED_WILDCARD_RESOURCE = re.compile(r"\$\{aws_s3_bucket\.lake\.arn\}/(landing|errors)/\*")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return (
        [item for element in value for item in _strings(element)] if isinstance(value, list) else []
    )


def iam_wildcards(tf: Terraform) -> list[str]:
    """Wildcards in any policy document: `*` in an action, a principal, or a resource other than
    the bucket's landing/* and errors/* objects."""
    found = []
    for name, document in blocks_of(tf, "data", "aws_iam_policy_document").items():
        for path, value in _walk(document):
            field = path.rsplit(".", 1)[-1]
            for text in _strings(value):
                if field in ("actions", "not_actions", "identifiers") and "*" in text:
                    found.append(f"{name}{path}: {text}")
                if (
                    field in ("resources", "not_resources")
                    and "*" in text
                    and not ALLOWED_WILDCARD_RESOURCE.fullmatch(text)
                ):
                    found.append(f"{name}{path}: {text}")
    return found


def statement(tf: Terraform, document: str, sid: str) -> dict[str, Any]:
    statements = blocks_of(tf, "data", "aws_iam_policy_document")[document].get("statement", [])
    matching = [s for s in statements if s.get("sid") == sid]
    assert len(matching) == 1, f"{document}: expected one statement {sid}"
    return matching[0]


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return load_terraform()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _firehose(tf: Terraform) -> dict[str, Any]:
    return blocks_of(tf, "resource", "aws_kinesis_firehose_delivery_stream")["this"]


def _s3_destination(tf: Terraform) -> dict[str, Any]:
    return _firehose(tf)["extended_s3_configuration"][0]


# --- Terraform agrees with the registry and provision.py -----------------------------------------


def test_terraform_matches_registry_and_provisioner(tf: Terraform) -> None:
    assert infra_mismatches(tf) == []


def test_terraform_covers_every_dataset(tf: Terraform) -> None:
    # Guards the comparison itself: an empty map on both sides would also "agree".
    assert set(local_value(tf, "datasets")) == {d.name for d in DATASETS} != set()


def test_bucket_default_is_the_contract_bucket(tf: Terraform) -> None:
    assert CONTRACT_BUCKET == "csv-batch-bucket"
    assert variable_default(tf, "bucket_name") == CONTRACT_BUCKET
    assert evaluate(tf, blocks_of(tf, "resource", "aws_s3_bucket")["lake"]["bucket"]) == (
        CONTRACT_BUCKET
    )


def test_role_name_is_the_provisioners(tf: Terraform) -> None:
    role = blocks_of(tf, "resource", "aws_iam_role")["firehose"]
    assert role["name"] == provision.FIREHOSE_ROLE_NAME
    assert provision.firehose_role_arn().endswith(f":role/{role['name']}")


def _terraform_resource_names(tf: Terraform, resources: Any) -> list[str]:
    """A statement's resources by what they name; `[for x in aws_kinesis_stream.this : x.arn]`
    names every stream of `local.datasets`."""
    if resources == "${[for stream in aws_kinesis_stream.this : stream.arn]}":
        return sorted(f"{name}-stream" for name in local_value(tf, "datasets"))
    return sorted(evaluate(tf, resource) for resource in _strings(resources))


def _provisioner_resource_names(resources: list[str]) -> list[str]:
    return sorted(
        resource.removeprefix("arn:aws:s3:::").rpartition(":stream/")[2] for resource in resources
    )


def role_mismatches(tf: Terraform, policy: dict[str, Any], trust: dict[str, Any]) -> list[str]:
    """How the provisioner's Firehose role (`make provision`) differs from infra/'s."""
    mismatches = []
    documents = blocks_of(tf, "data", "aws_iam_policy_document")
    for document, provisioned in (("firehose", policy), ("firehose_assume_role", trust)):
        terraform = {
            s["sid"]: (sorted(s["actions"]), _terraform_resource_names(tf, s.get("resources", [])))
            for s in documents[document]["statement"]
        }
        python = {
            s["Sid"]: (
                sorted(_strings(s["Action"])),
                _provisioner_resource_names(_strings(s.get("Resource", []))),
            )
            for s in provisioned["Statement"]
        }
        if python != terraform:
            mismatches.append(f"{document}: provisioner {python} != terraform {terraform}")
    (statement,) = trust["Statement"]
    if statement["Principal"] != {"Service": "firehose.amazonaws.com"} or statement[
        "Condition"
    ] != {"StringEquals": {"aws:SourceAccount": provision.ACCOUNT_ID}}:
        mismatches.append(f"firehose_assume_role: provisioner trusts {statement}")
    (role_policy,) = blocks_of(tf, "resource", "aws_iam_role_policy").values()
    if role_policy["name"] != provision.FIREHOSE_POLICY_NAME:
        mismatches.append(f"role policy name: terraform {role_policy['name']!r}")
    return mismatches


def test_provisioner_role_is_terraforms(tf: Terraform) -> None:
    policy = provision.firehose_role_policy(CONTRACT_BUCKET, REGION)
    assert role_mismatches(tf, policy, provision.firehose_trust_policy()) == []


def test_provisioner_role_change_is_reported(tf: Terraform) -> None:
    policy = provision.firehose_role_policy(CONTRACT_BUCKET, REGION)
    policy["Statement"][0]["Action"].append("kinesis:PutRecord")
    policy["Statement"][2]["Resource"].append(f"arn:aws:s3:::{CONTRACT_BUCKET}/*")
    trust = provision.firehose_trust_policy()
    trust["Statement"][0]["Principal"] = {"Service": "lambda.amazonaws.com"}
    mismatches = role_mismatches(tf, policy, trust)
    assert any(m.startswith("firehose: ") and "kinesis:PutRecord" in m for m in mismatches)
    assert any(m.startswith("firehose_assume_role: provisioner trusts") for m in mismatches)
    changed = copy.deepcopy(tf)
    blocks_of(changed, "resource", "aws_iam_role_policy")["firehose"]["name"] = "other"
    trust = provision.firehose_trust_policy()
    assert role_mismatches(changed, provision.firehose_role_policy(CONTRACT_BUCKET, REGION), trust)


def _set(path: Callable[[Terraform], dict], attribute: str, value: Any) -> Callable:
    def mutate(tf: Terraform) -> None:
        path(tf)[attribute] = value

    return mutate


def _dataset_entry(name: str) -> Callable[[Terraform], dict]:
    return lambda tf: local_value(tf, "datasets")[name]


def _remove_dataset(name: str) -> Callable[[Terraform], None]:
    return lambda tf: local_value(tf, "datasets").pop(name)


def _variable(name: str) -> Callable[[Terraform], dict]:
    return lambda tf: named_blocks(tf, "variable")[name]


TERRAFORM_CHANGES = {
    "prefix without trailing slash": (
        _set(_s3_destination, "prefix", "landing/${each.key}"),
        ["albums: prefix", "bands: prefix", "reviews: prefix"],
    ),
    "error prefix without dataset": (
        _set(_s3_destination, "error_output_prefix", "errors/!{firehose:error-output-type}/"),
        ["albums: error_output_prefix", "reviews: error_output_prefix"],
    ),
    "stream renamed": (
        _set(
            lambda tf: blocks_of(tf, "resource", "aws_kinesis_stream")["this"],
            "name",
            "${each.key}-kinesis",
        ),
        ["albums: stream_name", "albums: source_stream"],
    ),
    "firehose renamed": (
        _set(_firehose, "name", "${each.key}-delivery"),
        ["bands: firehose_name"],
    ),
    "source not keyed by dataset": (
        _set(
            lambda tf: _firehose(tf)["kinesis_source_configuration"][0],
            "kinesis_stream_arn",
            "${aws_kinesis_stream.this.arn}",
        ),
        ["reviews: source_stream"],
    ),
    "shard count": (_set(_dataset_entry("reviews"), "shard_count", 1), ["reviews: shard_count"]),
    "buffering interval": (
        _set(_dataset_entry("bands"), "buffering_interval_seconds", 300),
        ["bands: buffering_interval_seconds"],
    ),
    "bucket default": (
        _set(_variable("bucket_name"), "default", "my-lake"),
        ["albums: bucket"],
    ),
    "role renamed": (
        _set(lambda tf: blocks_of(tf, "resource", "aws_iam_role")["firehose"], "name", "firehose"),
        ["albums: source_role", "albums: destination_role"],
    ),
    "compressed": (
        _set(_s3_destination, "compression_format", "GZIP"),
        ["albums: compression_format"],
    ),
    "dataset missing": (_remove_dataset("albums"), ["albums: in the registry but not"]),
}


@pytest.mark.parametrize("change", TERRAFORM_CHANGES, ids=list(TERRAFORM_CHANGES))
def test_terraform_side_change_is_reported(tf: Terraform, change: str) -> None:
    mutate, expected = TERRAFORM_CHANGES[change]
    changed = copy.deepcopy(tf)
    mutate(changed)
    mismatches = infra_mismatches(changed)
    for fragment in expected:
        assert any(m.startswith(fragment) for m in mismatches), (fragment, mismatches)
    assert infra_mismatches(tf) == []  # the fixture itself was not touched


@dataclasses.dataclass(frozen=True)
class _FlatLanding(Dataset):
    """A registry whose landing prefix changed (it is a property, so dataclasses.replace can't)."""

    @property
    def landing_prefix(self) -> str:
        return f"landing-{self.name}/"


def _replace(dataset: str, **changes: Any) -> tuple[Dataset, ...]:
    return tuple(dataclasses.replace(d, **changes) if d.name == dataset else d for d in DATASETS)


REGISTRY_CHANGES = {
    "dataset renamed": (
        _replace("reviews", name="critiques"),
        ["critiques: in the registry but not", "reviews: in infra/ local.datasets but not"],
    ),
    "shard count": (_replace("albums", shard_count=3), ["albums: shard_count"]),
    "buffering size": (
        _replace("bands", buffering=BufferingHints(size_mb=8)),
        ["bands: buffering_size_mb"],
    ),
    "landing prefix": (
        tuple(_FlatLanding(d.name, d.columns, d.shard_count, d.buffering) for d in DATASETS),
        ["albums: prefix", "bands: prefix", "reviews: prefix"],
    ),
}


@pytest.mark.parametrize("change", REGISTRY_CHANGES, ids=list(REGISTRY_CHANGES))
def test_registry_side_change_is_reported(tf: Terraform, change: str) -> None:
    datasets, expected = REGISTRY_CHANGES[change]
    mismatches = infra_mismatches(tf, datasets)
    for fragment in expected:
        assert any(m.startswith(fragment) for m in mismatches), (fragment, mismatches)


def test_other_bucket_is_reported(tf: Terraform) -> None:
    mismatches = infra_mismatches(tf, bucket="another-bucket")
    assert {m.split(":")[0] for m in mismatches if ": bucket:" in m} == {d.name for d in DATASETS}


def test_provisioner_role_rename_is_reported(
    tf: Terraform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provision, "FIREHOSE_ROLE_NAME", "renamed-role")
    mismatches = infra_mismatches(tf)
    assert any(m.startswith("albums: source_role") and "renamed-role" in m for m in mismatches)


def test_duplicated_declaration_is_reported(tf: Terraform) -> None:
    # A copy-pasted stream per dataset instead of one for_each declaration.
    changed = copy.deepcopy(tf)
    changed["resource"].append({"aws_kinesis_stream": {"albums": {"name": "albums-stream"}}})
    assert any(m.startswith("aws_kinesis_stream: expected one") for m in infra_mismatches(changed))


# --- Hardening -----------------------------------------------------------------------------------


def _bucket_resource(tf: Terraform, type_: str) -> dict[str, Any]:
    """The single `type_` resource, checked to configure the lake bucket."""
    declared = blocks_of(tf, "resource", type_)
    assert len(declared) == 1, f"expected one {type_}, found {sorted(declared)}"
    body = next(iter(declared.values()))
    assert evaluate(tf, body["bucket"]) == CONTRACT_BUCKET, f"{type_} is not on the lake bucket"
    return body


def test_bucket_is_encrypted(tf: Terraform) -> None:
    body = _bucket_resource(tf, "aws_s3_bucket_server_side_encryption_configuration")
    default = body["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}


def test_bucket_is_versioned(tf: Terraform) -> None:
    body = _bucket_resource(tf, "aws_s3_bucket_versioning")
    assert body["versioning_configuration"][0]["status"] == "Enabled"


def test_bucket_blocks_public_access(tf: Terraform) -> None:
    body = _bucket_resource(tf, "aws_s3_bucket_public_access_block")
    flags = (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    )
    assert {flag: body.get(flag) for flag in flags} == dict.fromkeys(flags, True)


def test_bucket_disables_acls(tf: Terraform) -> None:
    body = _bucket_resource(tf, "aws_s3_bucket_ownership_controls")
    assert body["rule"][0]["object_ownership"] == "BucketOwnerEnforced"


def _positive_whole_default(tf: Terraform, expression: Any) -> int:
    """The default of the variable `expression` names; it must exist, be validated and positive."""
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(expression))
    assert match, f"{expression!r} is not a variable"
    variable = named_blocks(tf, "variable")[match.group(1)]
    assert variable.get("validation"), f"variable {match.group(1)} has no validation"
    default = variable["default"]
    assert isinstance(default, int) and default >= 1
    return default


@pytest.mark.parametrize(
    ("prefix", "variable"),
    [("landing/", "landing_expiration_days"), ("errors/", "errors_expiration_days")],
)
def test_lifecycle_expires_prefix(tf: Terraform, prefix: str, variable: str) -> None:
    body = _bucket_resource(tf, "aws_s3_bucket_lifecycle_configuration")
    rules = [r for r in body["rule"] if r.get("filter", [{}])[0].get("prefix") == prefix]
    assert len(rules) == 1, f"expected one lifecycle rule for {prefix}"
    rule = rules[0]
    assert rule["status"] == "Enabled"
    assert rule["expiration"][0]["days"] == f"${{var.{variable}}}"
    _positive_whole_default(tf, rule["expiration"][0]["days"])
    _positive_whole_default(tf, rule["noncurrent_version_expiration"][0]["noncurrent_days"])
    _positive_whole_default(
        tf, rule["abort_incomplete_multipart_upload"][0]["days_after_initiation"]
    )
    # Each Firehose prefix lies under the rule's prefix, so landing and error files do expire.
    destination = _s3_destination(tf)
    field = "prefix" if prefix == "landing/" else "error_output_prefix"
    assert all(evaluate(tf, destination[field], d.name).startswith(prefix) for d in DATASETS)


def test_lifecycle_expires_old_versions_everywhere(tf: Terraform) -> None:
    # Silver and gold overwrite their files each run; versioning would keep every copy otherwise.
    body = _bucket_resource(tf, "aws_s3_bucket_lifecycle_configuration")
    whole = [r for r in body["rule"] if r.get("filter", [{}])[0].get("prefix") == ""]
    assert len(whole) == 1 and whole[0]["status"] == "Enabled"
    _positive_whole_default(tf, whole[0]["noncurrent_version_expiration"][0]["noncurrent_days"])


def test_kinesis_streams_are_encrypted(tf: Terraform) -> None:
    stream = blocks_of(tf, "resource", "aws_kinesis_stream")["this"]
    assert stream["encryption_type"] == "KMS"
    assert evaluate(tf, stream["kms_key_id"]) == "alias/aws/kinesis"


def test_no_wildcards_in_iam(tf: Terraform) -> None:
    assert blocks_of(tf, "data", "aws_iam_policy_document"), "no policy documents parsed"
    assert iam_wildcards(tf) == []


def test_wildcard_check_catches_broad_grants(tf: Terraform) -> None:
    changed = copy.deepcopy(tf)
    document = blocks_of(changed, "data", "aws_iam_policy_document")["firehose"]
    document["statement"].append({"actions": ["s3:*"], "resources": ["*"]})
    document["dynamic"][0]["statement"]["content"][0]["resources"] = ["arn:aws:kms:*"]
    found = iam_wildcards(changed)
    assert any("s3:*" in f for f in found)
    assert any(f.endswith(": *") for f in found)
    assert any("arn:aws:kms:*" in f for f in found)


def test_iam_policies_only_come_from_checked_documents(tf: Terraform) -> None:
    # Inline JSON or attached managed policies would escape the wildcard check above.
    assert not blocks_of(tf, "resource", "aws_iam_role_policy_attachment")
    assert not blocks_of(tf, "resource", "aws_iam_policy")
    role = blocks_of(tf, "resource", "aws_iam_role")["firehose"]
    assert role["assume_role_policy"] == (
        "${data.aws_iam_policy_document.firehose_assume_role.json}"
    )
    policies = blocks_of(tf, "resource", "aws_iam_role_policy")
    assert [(p["role"], p["policy"]) for p in policies.values()] == [
        ("${aws_iam_role.firehose.id}", "${data.aws_iam_policy_document.firehose.json}")
    ]


def test_firehose_role_trust_is_firehose_of_this_account(tf: Terraform) -> None:
    trust = statement(tf, "firehose_assume_role", "FirehoseOfThisAccountOnly")
    assert trust["actions"] == ["sts:AssumeRole"]
    assert trust["principals"] == [{"type": "Service", "identifiers": ["firehose.amazonaws.com"]}]
    assert [(c["test"], c["variable"], c["values"]) for c in trust["condition"]] == [
        ("StringEquals", "aws:SourceAccount", ["${data.aws_caller_identity.current.account_id}"])
    ]


def test_firehose_role_permissions_are_least_privilege(tf: Terraform) -> None:
    kinesis = statement(tf, "firehose", "ReadOwnKinesisStreams")
    assert sorted(kinesis["actions"]) == [
        "kinesis:DescribeStream",
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    ]
    # Only the lake's own streams: every reference in the resources is to them.
    assert set(re.findall(r"\b(?:aws|data)_\w+\.\w+", str(kinesis["resources"]))) == {
        "aws_kinesis_stream.this"
    }
    bucket = statement(tf, "firehose", "LocateLakeBucket")
    assert sorted(bucket["actions"]) == ["s3:GetBucketLocation", "s3:ListBucket"]
    assert bucket["resources"] == ["${aws_s3_bucket.lake.arn}"]
    objects = statement(tf, "firehose", "WriteLandingAndErrors")
    assert sorted(objects["actions"]) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert sorted(objects["resources"]) == [
        "${aws_s3_bucket.lake.arn}/errors/*",
        "${aws_s3_bucket.lake.arn}/landing/*",
    ]
    statements = blocks_of(tf, "data", "aws_iam_policy_document")["firehose"]["statement"]
    assert all(s.get("effect", "Allow") == "Allow" for s in statements)
    assert len(statements) == 3


def test_kms_grant_only_for_a_customer_key_and_via_kinesis(tf: Terraform) -> None:
    dynamic = blocks_of(tf, "data", "aws_iam_policy_document")["firehose"]["dynamic"]
    kms = dynamic[0]["statement"]
    assert "local.kinesis_uses_customer_key" in kms["for_each"]
    assert local_value(tf, "kinesis_uses_customer_key") == (
        '${var.kinesis_kms_key_id != "alias/aws/kinesis"}'
    )
    content = kms["content"][0]
    assert content["actions"] == ["kms:Decrypt"]
    assert [(c["variable"], c["values"]) for c in content["condition"]] == [
        ("kms:ViaService", ["kinesis.${var.region}.amazonaws.com"])
    ]


def test_firehose_waits_for_its_permissions(tf: Terraform) -> None:
    # Firehose checks the role when the delivery stream is created.
    assert _firehose(tf)["depends_on"] == ["${aws_iam_role_policy.firehose}"]


# --- Provider, variables, outputs ----------------------------------------------------------------


def test_provider_is_aws_5(tf: Terraform) -> None:
    required = tf["terraform"][0]["required_providers"][0]["aws"]
    assert required["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> ?5(\.\d+)*", required["version"])


def test_provider_targets_localstack_only_when_asked(tf: Terraform) -> None:
    provider = tf["provider"][0]["aws"]
    endpoints = provider["endpoints"][0]
    assert set(endpoints) == {"s3", "kinesis", "firehose", "iam", "sts"}
    conditional = "${var.use_localstack ? var.localstack_endpoint : null}"
    assert all(url == conditional for url in endpoints.values())
    for flag in ("skip_credentials_validation", "s3_use_path_style"):
        assert provider[flag] == "${var.use_localstack}"
    assert variable_default(tf, "use_localstack") is False
    assert variable_default(tf, "localstack_endpoint") == LOCALSTACK_ENDPOINT


def test_variables_are_described_and_typed(tf: Terraform) -> None:
    variables = named_blocks(tf, "variable")
    assert variables
    undocumented = [n for n, v in variables.items() if not v.get("description") or "type" not in v]
    assert undocumented == []


def test_outputs(tf: Terraform) -> None:
    outputs = named_blocks(tf, "output")
    assert {
        "bucket_name",
        "bucket_arn",
        "kinesis_stream_names",
        "kinesis_stream_arns",
        "firehose_names",
        "firehose_arns",
        "firehose_role_arn",
    } <= set(outputs)
    assert all(o.get("description") for o in outputs.values())


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH")
def test_terraform_fmt() -> None:
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", "-recursive", str(INFRA)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- docker-compose LocalStack -------------------------------------------------------------------


def _localstack(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose["services"]
    matching = [s for s in services.values() if str(s.get("image", "")).startswith("localstack/")]
    assert len(matching) == 1, "expected one LocalStack service"
    return matching[0]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def test_localstack_image_is_pinned_to_a_tokenless_release(compose: dict[str, Any]) -> None:
    image = _localstack(compose)["image"]
    repository, _, tag = image.rpartition(":")
    assert repository == "localstack/localstack"
    # `latest` (and any tag after 4.14) is the unified image that exits without an auth token.
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"{image} is not pinned to a release tag"
    assert tuple(map(int, match.groups())) <= (4, 14, 0)
    # One LocalStack for both routes: the version `make test-localstack` runs on the host.
    assert tag == localstack_host.VERSION


def test_localstack_services(tf: Terraform, compose: dict[str, Any]) -> None:
    services = set(_environment(_localstack(compose))["SERVICES"].split(","))
    # Every service Terraform talks to, plus DynamoDB for the KCL lease table behind
    # LocalStack's Firehose-from-Kinesis delivery.
    terraform_services = set(tf["provider"][0]["aws"]["endpoints"][0])
    assert services == terraform_services | {"dynamodb"}
    assert {"kinesis", "firehose", "s3", "iam", "sts"} <= services


def test_localstack_port_matches_the_settings_endpoint(compose: dict[str, Any]) -> None:
    port = urlparse(LOCALSTACK_ENDPOINT).port
    published = []
    for mapping in _localstack(compose)["ports"]:
        host, _, container = str(mapping).rpartition(":")
        published.append((host.rpartition(":")[-1], container))
    assert (str(port), "4566") in published


def test_localstack_has_healthcheck_and_named_volume(compose: dict[str, Any]) -> None:
    service = _localstack(compose)
    assert "_localstack/health" in " ".join(service["healthcheck"]["test"])
    volumes = [str(v).split(":") for v in service["volumes"]]
    assert any(
        source in (compose.get("volumes") or {}) and target == "/var/lib/localstack"
        for source, target, *_ in volumes
    )


# --- Athena catalog ------------------------------------------------------------------------------

FOLDER_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
_FOLDER_OR_FILE = re.compile(r'\$\{\(endswith\(each\.value\.path, "/"\) \? "(.*)" : "(.*)"\)\}')


def lake_tables_view(catalog: Sequence[CatalogTable]) -> dict[str, dict[str, Any]]:
    """Per Glue table, what the lake writes: its path and its columns as Hive types, in order."""
    return {
        table.glue_name: {"path": table.path, "columns": [list(c) for c in table.glue_columns()]}
        for table in catalog
    }


def catalog_mismatches(tf: Terraform, catalog: Sequence[CatalogTable] | None = None) -> list[str]:
    """How `local.lake_tables` in infra/ differs from the lake's catalog, column by column."""
    declared = local_value(tf, "lake_tables") or {}
    expected = lake_tables_view(lake_catalog() if catalog is None else catalog)
    problems = [f"{name}: in the lake but not in infra/" for name in expected.keys() - declared]
    problems += [f"{name}: in infra/ but not in the lake" for name in declared.keys() - expected]
    for name in sorted(expected.keys() & declared.keys()):
        lake, infra = expected[name], declared[name]
        if infra.get("path") != lake["path"]:
            problems.append(f"{name}: path: infra/ {infra.get('path')!r}, lake {lake['path']!r}")
        lake_columns, infra_columns = dict(lake["columns"]), dict(infra.get("columns", []))
        for column in lake_columns.keys() | infra_columns.keys():
            if lake_columns.get(column) != infra_columns.get(column):
                problems.append(
                    f"{name}: column {column}: infra/ {infra_columns.get(column)}, "
                    f"lake {lake_columns.get(column)}"
                )
        if [c for c, _ in lake["columns"]] != [c for c, *_ in infra.get("columns", [])]:
            problems.append(f"{name}: column order differs from the lake's")
    return problems


def _folder_or_file(tf: Terraform, expression: str, name: str, path: str) -> Any:
    """`endswith(each.value.path, "/") ? a : b` for one table, as Terraform evaluates it."""
    match = _FOLDER_OR_FILE.fullmatch(expression)
    assert match, f"not a folder-or-file expression: {expression}"
    branch = match.group(1) if path.endswith("/") else match.group(2)
    return evaluate(tf, branch, name, {"path": path})


def test_glue_tables_match_the_lake(tf: Terraform) -> None:
    assert local_value(tf, "lake_tables"), "infra/ declares no lake_tables"
    assert catalog_mismatches(tf) == []


INFRA_CATALOG_CHANGES = {
    "type changed": (("silver_reviews", "score", "float"), "silver_reviews: column score"),
    "column dropped": (
        ("gold_top10_by_country", "rank", None),
        "gold_top10_by_country: column rank",
    ),
}


@pytest.mark.parametrize("change", INFRA_CATALOG_CHANGES, ids=list(INFRA_CATALOG_CHANGES))
def test_infra_side_column_change_is_reported(tf: Terraform, change: str) -> None:
    (table, column, new_type), expected = INFRA_CATALOG_CHANGES[change]
    changed = copy.deepcopy(tf)
    columns = local_value(changed, "lake_tables")[table]["columns"]
    index = next(i for i, (name, _) in enumerate(columns) if name == column)
    if new_type is None:
        del columns[index]
    else:
        columns[index][1] = new_type
    assert any(m.startswith(expected) for m in catalog_mismatches(changed))
    assert catalog_mismatches(tf) == []  # the fixture itself was not touched


def _with_schema(table: str, schema: pl.Schema) -> list[CatalogTable]:
    return [
        dataclasses.replace(t, schema=schema) if t.glue_name == table else t for t in lake_catalog()
    ]


def test_lake_side_column_change_is_reported(tf: Terraform) -> None:
    reviews = next(t for t in lake_catalog() if t.glue_name == "silver_reviews")
    retyped = pl.Schema({**reviews.schema, "score": pl.Float32})
    assert catalog_mismatches(tf, _with_schema("silver_reviews", retyped)) == [
        "silver_reviews: column score: infra/ double, lake float"
    ]
    added = pl.Schema({**reviews.schema, "language": pl.String})
    assert "silver_reviews: column language: infra/ None, lake string" in catalog_mismatches(
        tf, _with_schema("silver_reviews", added)
    )
    dropped = [t for t in lake_catalog() if t.glue_name != "gold_genre_by_decade"]
    expected = ["gold_genre_by_decade: in infra/ but not in the lake"]
    assert catalog_mismatches(tf, dropped) == expected


def test_glue_tables_read_each_table_where_the_contract_puts_it(tf: Terraform) -> None:
    glue = blocks_of(tf, "resource", "aws_glue_catalog_table")
    assert list(glue) == ["this"], "expected one aws_glue_catalog_table declaration"
    body = glue["this"]
    assert body["for_each"] == "${local.catalog_tables}"
    assert local_value(tf, "catalog_tables") == "${local.with_catalog ? local.lake_tables : {}}"
    assert body["table_type"] == "EXTERNAL_TABLE"
    assert body["database_name"] == "${aws_glue_catalog_database.lake[0].name}"
    (descriptor,) = body["storage_descriptor"]
    assert descriptor["ser_de_info"] == [{"serialization_library": PARQUET_SERDE}]
    columns = descriptor["dynamic"][0]["columns"]
    assert columns["for_each"] == "${each.value.columns}"
    assert columns["content"] == [{"name": "${columns.value[0]}", "type": "${columns.value[1]}"}]
    manifest = blocks_of(tf, "resource", "aws_s3_object")["athena_manifest"]
    assert manifest["for_each"] == "${local.file_tables}"
    for table in lake_catalog():
        name, path = table.glue_name, table.path
        location = _folder_or_file(tf, descriptor["location"], name, path)
        input_format = _folder_or_file(tf, descriptor["input_format"], name, path)
        if table.folder:
            assert (location, input_format) == (f"s3://{CONTRACT_BUCKET}/{path}", FOLDER_INPUT)
        else:
            # A symlink table: its folder holds one manifest naming the table's file.
            assert input_format == SYMLINK_INPUT
            key = evaluate(tf, manifest["key"], name)
            assert f"s3://{CONTRACT_BUCKET}/{key}".startswith(location), (location, key)
            content = evaluate(tf, manifest["content"], name, {"path": path})
            assert content == f"s3://{CONTRACT_BUCKET}/{path}\n"
    # A file table is exactly a path that does not end in "/", on both sides.
    assert "!endswith(table.path" in local_value(tf, "file_tables")
    assert all(t.path.endswith("/") == t.folder for t in lake_catalog())


def test_glue_database_only_on_aws(tf: Terraform) -> None:
    # LocalStack Community has no Glue: the catalog is left out there.
    assert local_value(tf, "with_catalog") == "${var.athena_catalog && !var.use_localstack}"
    database = blocks_of(tf, "resource", "aws_glue_catalog_database")["lake"]
    assert database["count"] == "${local.with_catalog ? 1 : 0}"
    assert re.fullmatch(r"[a-z0-9_]+", variable_default(tf, "glue_database_name"))
