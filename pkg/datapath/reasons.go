package datapath

import "fmt"

// Drop reasons, verdicts, event types and lookups as bpf/common.h numbers
// them.
const (
	ReasonNone           uint8 = 0
	ReasonPolicyNoEntry  uint8 = 1
	ReasonPolicyDenied   uint8 = 2
	ReasonMalformed      uint8 = 3
	ReasonUnsupportedL3  uint8 = 4
	ReasonUnknownEP      uint8 = 5
	ReasonNoPolicyMap    uint8 = 6
	ReasonSpoofedSource  uint8 = 7
	ReasonFragNotFound   uint8 = 8
	ReasonProxyNotFound  uint8 = 9
	ReasonProxyAssign    uint8 = 10
	reasonCount                = 11
	EventDrop            uint8 = 1
	EventPolicyVerdict   uint8 = 2
	VerdictForwarded     uint8 = 1
	VerdictDropped       uint8 = 2
	VerdictAudit         uint8 = 3
	VerdictRedirected    uint8 = 4
	DirIngress           uint8 = 0
	DirEgress            uint8 = 1
	counterMax                 = 32
	ipcacheFlagCluster         = 1
	endpointAuditIngress       = 1
	endpointAuditEgress        = 2
	cfgVerdictEvents           = 1
	policyFlagDeny             = 1
	ctFlagClosing              = 1
	ctFlagAudit                = 2
	ctFlagSeenReply            = 4
	ctFlagProxyUpstream        = 8
	ctFlagReply                = 16
	familyIPv4                 = 4
)

var reasonNames = [...]string{
	ReasonNone:          "none",
	ReasonPolicyNoEntry: "no policy entry",
	ReasonPolicyDenied:  "denied by policy",
	ReasonMalformed:     "malformed packet",
	ReasonUnsupportedL3: "unsupported protocol",
	ReasonUnknownEP:     "unknown endpoint",
	ReasonNoPolicyMap:   "no policy map",
	ReasonSpoofedSource: "spoofed source address",
	ReasonFragNotFound:  "fragment without its first",
	ReasonProxyNotFound: "L7 proxy not listening",
	ReasonProxyAssign:   "L7 proxy redirect failed",
}

// ReasonName names a drop reason.
func ReasonName(r uint8) string {
	if int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", r)
}

// VerdictName names a verdict.
func VerdictName(v uint8) string {
	switch v {
	case VerdictForwarded:
		return "FORWARDED"
	case VerdictDropped:
		return "DROPPED"
	case VerdictAudit:
		return "AUDIT"
	case VerdictRedirected:
		return "REDIRECTED"
	}
	return fmt.Sprintf("verdict-%d", v)
}

// DirName names a direction as seen from the endpoint.
func DirName(d uint8) string {
	if d == DirEgress {
		return "egress"
	}
	return "ingress"
}

// MatchName names the lookup that decided.
func MatchName(m uint8) string {
	switch m {
	case 1:
		return "identity"
	case 2:
		return "any-identity"
	case 3:
		return "cidr"
	case 4:
		return "conntrack"
	case 5:
		return "conntrack-reply"
	case 6:
		return "conntrack-related"
	}
	return "none"
}
