package main

import (
	"fmt"
	"net/netip"
	"time"
)

// settings are the sizes of a run: full (make bench) or quick
// (BENCH_QUICK=1, the same measurements, fewer and shorter).
type settings struct {
	Quick bool
	// Rounds of the interleaved A/B/... comparisons; NFRounds of the
	// iptables/nftables contrast runs (rules reloaded for every slot);
	// L7Rounds of the HTTP runs (wrk cannot alternate in slices: more,
	// shorter rounds).
	Rounds, NFRounds, L7Rounds int
	// Dur is the length of one request/response, connect/close or
	// throughput run of one variant in one round.
	Dur     time.Duration
	HTTPDur time.Duration // wrk takes whole seconds
	// CRRWorkers is the number of concurrent connect/close loops.
	CRRWorkers int
	// Policy update: repetitions per variant, at least UpdMin, at most
	// UpdMax, and no new one once UpdBudget is spent.
	UpdBudget      time.Duration
	UpdMin, UpdMax int
	EPAddReps      int
	MemEndpoints   int
	WrkConns       int
}

func settingsFor(quick bool) settings {
	if quick {
		return settings{Quick: true, Rounds: 3, NFRounds: 3, L7Rounds: 3, Dur: time.Second, HTTPDur: time.Second, CRRWorkers: 2,
			UpdBudget: 6 * time.Second, UpdMin: 1, UpdMax: 10, EPAddReps: 5, MemEndpoints: 100, WrkConns: 16}
	}
	return settings{Rounds: 7, NFRounds: 5, L7Rounds: 9, Dur: 1500 * time.Millisecond, HTTPDur: 2 * time.Second, CRRWorkers: 2,
		UpdBudget: 30 * time.Second, UpdMin: 5, UpdMax: 100, EPAddReps: 25, MemEndpoints: 100, WrkConns: 16}
}

// Names and addresses. Everything the run makes carries the mbrb prefix,
// so that a later run (or `membrane-bench cleanup`) can find leftovers.
const (
	nsPrefix     = "mbrb-"
	agentHostIf  = "mbrb_host"
	agentHostNet = "mbrb_net"
	plainPrefix  = "mbrbx" // host sides of the veths the bench wires itself
	plainTmp     = "tmpbx" // their peers before the move (pkg/endpoint's naming)
	bpffsPrefix  = "/sys/fs/bpf/mbrb-"
	iptChain     = "MBRB-FWD"
	iptUpdChain  = "MBRB-UPD"
	iptF100      = "MBRB-F100"
	iptF60k      = "MBRB-F60K"
	nftTable     = "mbrbench"
	nftUpdTable  = "mbrbupd"

	clientCore = "0"
	serverCore = "1"

	portEcho    = 5001
	portSink    = 5002 // stream tests: the server reads and discards
	portHTTP    = 8080 // direct HTTP (and nginx's upstream)
	portL7      = 80   // HTTP through Membrane's proxy
	portNginx   = 8081 // nginx reverse proxy, on the host
	portUpd     = 7000 // policy update prober (membrane, iptables)
	portUpdNft  = 7002 // policy update prober (nftables)
	portEPAdd   = 7001 // endpoint add prober
	flatPorts   = 6    // ports per CIDR in the 60,000-entry policy
	mainCIDRs   = 10000
	serverCIDRs = 1000
)

var (
	agentPool = netip.MustParsePrefix("10.251.0.0/24")
	gateway   = netip.MustParseAddr("10.251.0.1")
	// Addresses of the endpoints the bench wires itself (outside the pool).
	plainCli   = netip.MustParseAddr("10.251.1.2")
	plainSrv   = netip.MustParseAddr("10.251.1.3")
	plainF100  = netip.MustParseAddr("10.251.1.4")
	plainF60k  = netip.MustParseAddr("10.251.1.5")
	plainTrial = netip.MustParseAddr("10.251.1.100")
)

// mainCIDR is the i-th /32 of the 10,000 CIDR identities of the standing
// state (198.18.0.0/15 is the benchmarking range, never routed).
func mainCIDR(i int) string { return addrFrom(0xc6120000+uint32(i)) + "/32" }

// updCIDR is the i-th /32 of the policy-update test; disjoint from mainCIDR.
func updCIDR(i int) string { return addrFrom(0xc6130000+uint32(i)) + "/32" }

func addrFrom(v uint32) string {
	return fmt.Sprintf("%d.%d.%d.%d", v>>24, v>>16&255, v>>8&255, v&255)
}

var blockNames = []string{"datapath", "flat", "update", "epadd", "l7", "mem"}
