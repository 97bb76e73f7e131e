package policy

import "strings"

// Port names and ICMP type names, as Kubernetes and Cilium accept them.

// isSvcName reports whether s is an IANA service name, the syntax of port
// names: 1-15 characters, letters, digits and '-', at least one letter, no
// '-' at either end or twice in a row.
func isSvcName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	letter := false
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
			letter = true
		case r >= '0' && r <= '9', r == '-':
		default:
			return false
		}
	}
	return letter
}

func hasICMPName(names map[string]uint8, n string) bool { _, ok := names[n]; return ok }

// ICMP type names, as Cilium's api.ICMPField accepts them.
var icmpv4Types = map[string]uint8{
	"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8,
	"EchoRequest": 8, "RouterAdvertisement": 9, "RouterSelection": 10,
	"TimeExceeded": 11, "ParameterProblem": 12, "Timestamp": 13,
	"TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
	"ExtendedEchoReply": 43,
}

var icmpv6Types = map[string]uint8{
	"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3,
	"ParameterProblem": 4, "EchoRequest": 128, "EchoReply": 129,
	"MulticastListenerQuery": 130, "MulticastListenerReport": 131,
	"MulticastListenerDone": 132, "RouterSolicitation": 133,
	"RouterAdvertisement": 134, "NeighborSolicitation": 135,
	"NeighborAdvertisement": 136, "RedirectMessage": 137,
	"RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
	"ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
	"InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
	"HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146,
	"MobilePrefixAdvertisement": 147, "DuplicateAddressRequestCodeSuffix": 157,
	"DuplicateAddressConfirmationCodeSuffix": 158, "ExtendedEchoRequest": 160,
	"ExtendedEchoReply": 161,
}

var numberWords = map[string]bool{
	"zero": true, "one": true, "two": true, "three": true, "four": true, "five": true, "six": true,
	"seven": true, "eight": true, "nine": true, "ten": true, "eleven": true, "twelve": true,
	"thirteen": true, "fourteen": true, "fifteen": true, "sixteen": true, "seventeen": true,
	"eighteen": true, "nineteen": true, "twenty": true, "thirty": true, "forty": true, "fifty": true,
	"sixty": true, "seventy": true, "eighty": true, "ninety": true, "hundred": true, "thousand": true,
}

// spellsNumber reports whether a port name is a number written in words
// ("eighty", "eighty-one"): a valid name by syntax, but never a container
// port's name and almost surely a port number written out, so it is
// rejected rather than silently matching no named port.
func spellsNumber(s string) bool {
	for _, w := range strings.Split(strings.ToLower(s), "-") {
		if !numberWords[w] {
			return false
		}
	}
	return true
}

// isPortName reports whether s can name a port.
func isPortName(s string) bool { return isSvcName(s) && !spellsNumber(s) }
