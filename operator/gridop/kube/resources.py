"""The resources gridop talks to."""

from ..api.v1beta1 import GROUP, VERSION, gridsession, taskbatch, taskpool
from .client import Resource

PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False)
GRIDSESSIONS = Resource(GROUP, VERSION, gridsession.PLURAL, gridsession.KIND)
TASKBATCHES = Resource(GROUP, VERSION, taskbatch.PLURAL, taskbatch.KIND)
TASKPOOLS = Resource(GROUP, VERSION, taskpool.PLURAL, taskpool.KIND)
JOBS = Resource("batch", "v1", "jobs", "Job")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
TOKENREVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False)
SUBJECTACCESSREVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", namespaced=False)
