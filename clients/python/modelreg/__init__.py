"""modelreg Python SDK: typed sync and asyncio clients of the model registry.

```python
from modelreg import Registry, NotFound

with Registry() as registry:
    registry.create_model("fraud", owner_team="risk")
    version = registry.create_model_version("fraud", run_id="run-42", metrics={"auc": 0.93})
```

Methods return the generated protobuf messages re-exported here (`Model`, `ModelVersion`, `Alias`, ...).
Serving processes resolve aliases from memory with :class:`modelreg.resolver.AliasResolver`.
"""

from modelreg._core import ABSENT, ClientConfig, model_name, version_name
from modelreg._core import SDK_VERSION as __version__
from modelreg.aio import AsyncRegistry
from modelreg.client import Registry
from modelreg.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ModelregError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from modelreg.resolver import AliasResolver, AsyncAliasResolver
from modelreg.v1.lifecycle_service_pb2 import (
    Alias,
    Change,
    ChangeType,
    ResolveAliasResponse,
    TrafficPolicy,
    TrafficRoute,
)
from modelreg.v1.model_pb2 import (
    CodeRef,
    DatasetRef,
    Dependencies,
    Lineage,
    Model,
    ModelVersion,
    PackageRequirement,
    PromotionPolicy,
    Schema,
    SchemaField,
    Stage,
)

__all__ = [
    "ABSENT",
    "Alias",
    "AliasResolver",
    "AlreadyExists",
    "AsyncAliasResolver",
    "AsyncRegistry",
    "Cancelled",
    "Change",
    "ChangeType",
    "ClientConfig",
    "CodeRef",
    "Conflict",
    "DataLoss",
    "DatasetRef",
    "DeadlineExceeded",
    "Dependencies",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Lineage",
    "Model",
    "ModelVersion",
    "ModelregError",
    "NotFound",
    "OutOfRange",
    "PackageRequirement",
    "PermissionDenied",
    "PromotionPolicy",
    "Registry",
    "ResolveAliasResponse",
    "ResourceExhausted",
    "Schema",
    "SchemaField",
    "Stage",
    "TrafficPolicy",
    "TrafficRoute",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "model_name",
    "version_name",
]
