// Package conformance owns `membrane conformance run`: it reads the shared
// network-policy conformance cases (Kubernetes e2e, cyclonus, Cilium
// connectivity and policy tests, selector tables), builds each case's
// topology with real network namespaces wired as Membrane endpoints through
// the agent's API, imports the case's policies through the API, probes with
// real packets (TCP, UDP, HTTP, ICMP) and compares what got through with
// the case's truth table.
//
// It talks to the agent only through pkg/api: a private agent it runs in
// process (temporary socket and state, bpffs directory
// /sys/fs/bpf/membrane-conformance-<pid>, host device mbc<pid>_host, pool
// 10.244.0.0/16), or a running one. On the host it touches only what it
// makes — namespaces mbrcf-<pid>-*, the world veth mbcw<pid> with its /32
// routes, neighbours and node addresses, the lock
// /run/lock/membrane-conformance.lock — and removes it when it ends, even on
// failure; a later run removes what a killed one left.
//
// It never changes the agent, the datapath or the policy engine: a case
// that fails because of them is reported, not worked around.
package conformance
