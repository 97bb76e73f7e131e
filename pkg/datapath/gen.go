package datapath

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type event -type ipcache_key -type ipcache_value -type endpoint_info -type policy_key -type policy_entry -type ct_key -type ct_entry -type dp_config bpf ../../bpf/membrane.c -- -I../../bpf
