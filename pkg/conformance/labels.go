package conformance

import (
	"slices"
	"sort"
)

// Kubernetes conventions of Cilium's pod labels.
const (
	podNamespaceLabel    = "io.kubernetes.pod.namespace"
	namespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
)

// PodLabels derives the labels Cilium gives a Kubernetes pod's endpoint:
// `k8s:<key>=<value>` for each pod label, `k8s:io.kubernetes.pod.namespace`,
// `k8s:io.cilium.k8s.namespace.labels.<key>=<value>` for each label of its
// namespace, and the labels Cilium derives (cluster, service account), all
// from source k8s. The result is sorted, one value per key.
func PodLabels(p Pod, ns Namespace) []string {
	m := map[string]string{}
	for k, v := range p.Labels {
		m[k] = v
	}
	if p.Namespace != "" {
		m[podNamespaceLabel] = p.Namespace
	}
	for k, v := range ns.Labels {
		m[namespaceLabelPrefix+k] = v
	}
	for k, v := range p.CiliumDerivedLabels {
		m[k] = v
	}
	return k8sLabels(m)
}

func k8sLabels(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, "k8s:"+k+"="+v)
	}
	sort.Strings(out)
	return out
}

// sameLabels compares two sorted label lists.
func sameLabels(a, b []string) bool { return slices.Equal(a, b) }
