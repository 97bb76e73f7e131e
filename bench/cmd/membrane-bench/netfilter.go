package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// The iptables and nftables variants filter the forwarded traffic of the
// veths the bench wires itself (host sides named mbrbx*), in the FORWARD
// path, as a host firewall for containers does. Both begin with the
// conntrack shortcut every stateful ruleset has (established and related
// packets accepted first), so that, like Membrane with its own conntrack,
// only the first packet of a flow walks the rules.
//
// Only rules and chains of the bench are touched: the jump from FORWARD
// matches the bench's interfaces only, the chains and tables carry the
// MBRB / mbrb prefixes.

// iptRestore loads rules with iptables-restore --noflush (the tables'
// other rules stay).
func iptRestore(ctx context.Context, rules string) error {
	_, err := runStdin(ctx, 5*time.Minute, []byte(rules), "iptables-restore", "--noflush")
	return err
}

// iptRemoveAll removes the bench's jump from FORWARD and its chains.
func iptRemoveAll(ctx context.Context) {
	for i := 0; i < 10; i++ {
		if exec.CommandContext(ctx, "iptables", "-D", "FORWARD", "-i", plainPrefix+"+", "-j", iptChain).Run() != nil {
			break
		}
	}
	chains := []string{iptChain, iptUpdChain, iptF100, iptF60k}
	for _, c := range chains {
		_ = exec.CommandContext(ctx, "iptables", "-F", c).Run()
	}
	for _, c := range chains {
		_ = exec.CommandContext(ctx, "iptables", "-X", c).Run()
	}
}

// iptDatapathRules: 10,000 rules toward the server, the allowing one last.
func iptDatapathRules(srvIf string) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + iptChain + " - [0:0]\n")
	fmt.Fprintf(&b, "-I FORWARD 1 -i %s+ -j %s\n", plainPrefix, iptChain)
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n", iptChain)
	for i := 0; i < mainCIDRs-1; i++ {
		fmt.Fprintf(&b, "-A %s -o %s -s %s -p tcp -m tcp --dport %d -j ACCEPT\n", iptChain, srvIf, mainCIDR(i), portEcho)
	}
	fmt.Fprintf(&b, "-A %s -o %s -s %s/32 -p tcp -m multiport --dports %d,%d,%d -j ACCEPT\n", iptChain, srvIf, plainCli, portEcho, portSink, portHTTP)
	fmt.Fprintf(&b, "-A %s -o %s -j DROP\nCOMMIT\n", iptChain, srvIf)
	return b.String()
}

// iptFlatRules: 100 rules toward one server, 60,000 toward the other, the
// allowing one last in each.
func iptFlatRules(if100, if60k string) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, c := range []string{iptChain, iptF100, iptF60k} {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	fmt.Fprintf(&b, "-I FORWARD 1 -i %s+ -j %s\n", plainPrefix, iptChain)
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n", iptChain)
	fmt.Fprintf(&b, "-A %s -o %s -j %s\n", iptChain, if100, iptF100)
	fmt.Fprintf(&b, "-A %s -o %s -j %s\n", iptChain, if60k, iptF60k)
	for _, c := range []struct {
		chain string
		n     int
	}{{iptF100, 100}, {iptF60k, 60000}} {
		for i := 0; i < c.n-1; i++ {
			fmt.Fprintf(&b, "-A %s -s %s -p tcp -m tcp --dport %d -j ACCEPT\n", c.chain, mainCIDR(i%mainCIDRs), portEcho+i/mainCIDRs)
		}
		fmt.Fprintf(&b, "-A %s -s %s/32 -p tcp -m tcp --dport %d -j ACCEPT\n", c.chain, plainCli, portEcho)
		fmt.Fprintf(&b, "-A %s -j DROP\n", c.chain)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// iptUpdBase: UDP probes to the update port go through MBRB-UPD (empty:
// dropped) until a test fills it.
func iptUpdBase(srvIf string) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + iptChain + " - [0:0]\n:" + iptUpdChain + " - [0:0]\n")
	fmt.Fprintf(&b, "-I FORWARD 1 -i %s+ -j %s\n", plainPrefix, iptChain)
	fmt.Fprintf(&b, "-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n", iptChain)
	fmt.Fprintf(&b, "-A %s -o %s -p udp -m udp --dport %d -j %s\n", iptChain, srvIf, portUpd, iptUpdChain)
	fmt.Fprintf(&b, "-A %s -o %s -p udp -m udp --dport %d -j DROP\nCOMMIT\n", iptChain, srvIf, portUpd)
	return b.String()
}

// iptUpdRules replaces MBRB-UPD with n rules, the prober's last: what
// `iptables-restore --noflush FILE` loads in the update test.
func iptUpdRules(n int) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + iptUpdChain + " - [0:0]\n")
	for i := 0; i < n-1; i++ {
		fmt.Fprintf(&b, "-A %s -s %s -p udp -m udp --dport %d -j ACCEPT\n", iptUpdChain, updCIDR(i), portUpd)
	}
	fmt.Fprintf(&b, "-A %s -s %s/32 -p udp -m udp --dport %d -j ACCEPT\nCOMMIT\n", iptUpdChain, plainCli, portUpd)
	return b.String()
}

func nftApply(ctx context.Context, ruleset string) error {
	_, err := runStdin(ctx, 5*time.Minute, []byte(ruleset), "nft", "-f", "-")
	return err
}

func nftDelete(ctx context.Context, table string) {
	_, _ = run(ctx, time.Minute, "nft", "delete", "table", "ip", table)
}

// nftDatapathRules: a set of 10,000 (address . port) elements.
func nftDatapathRules(srvIf string) string {
	var el []string
	for i := 0; i < mainCIDRs-3; i++ {
		el = append(el, fmt.Sprintf("%s . %d", strings.TrimSuffix(mainCIDR(i), "/32"), portEcho))
	}
	for _, p := range []int{portEcho, portSink, portHTTP} {
		el = append(el, fmt.Sprintf("%s . %d", plainCli, p))
	}
	return fmt.Sprintf(`table ip %[1]s {
	set allow {
		type ipv4_addr . inet_service
		size 131072
		elements = { %[2]s }
	}
	chain forward_hook {
		type filter hook forward priority filter; policy accept;
		iifname "%[3]s*" jump bench_filter
	}
	chain bench_filter {
		ct state established,related accept
		oifname "%[4]s" ip saddr . tcp dport @allow accept
		oifname "%[4]s" drop
	}
}
`, nftTable, strings.Join(el, ", "), plainPrefix, srvIf)
}

// nftUpdBase: UDP probes to the nftables update port pass only when their
// (address . port) is in the set, empty at first.
func nftUpdBase(srvIf string) string {
	return fmt.Sprintf(`table ip %[1]s {
	set upd {
		type ipv4_addr . inet_service
		size 131072
	}
	chain forward_hook {
		type filter hook forward priority filter; policy accept;
		oifname "%[2]s" udp dport %[3]d ip saddr . udp dport @upd accept
		oifname "%[2]s" udp dport %[3]d drop
	}
}
`, nftUpdTable, srvIf, portUpdNft)
}

// nftUpdRules fills the set with n elements, the prober's last: what
// `nft -f FILE` loads in the update test.
func nftUpdRules(n int) string {
	el := make([]string, 0, n)
	for i := 0; i < n-1; i++ {
		el = append(el, fmt.Sprintf("%s . %d", strings.TrimSuffix(updCIDR(i), "/32"), portUpdNft))
	}
	el = append(el, fmt.Sprintf("%s . %d", plainCli, portUpdNft))
	return fmt.Sprintf("add element ip %s upd { %s }\n", nftUpdTable, strings.Join(el, ", "))
}
