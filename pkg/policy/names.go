package policy

import (
	"regexp"
	"sort"
)

var (
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// checkName checks an object name as Kubernetes does (DNS-1123 subdomain).
func checkName(p *problems, path, name string) {
	switch {
	case name == "":
		p.invalid(path, "a name is required")
	case len(name) > 253 || !dns1123Subdomain.MatchString(name):
		p.invalid(path, "%q is not a valid name (lowercase letters, digits, '-' and '.', at most 253 characters)", name)
	}
}

// checkNamespace checks a namespace name (DNS-1123 label).
func checkNamespace(p *problems, path, ns string) {
	if len(ns) > 63 || !dns1123Label.MatchString(ns) {
		p.invalid(path, "%q is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)", ns)
	}
}

func sortedBoolKeys(m map[string]bool) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
