// Package bpf holds Interlock's eBPF programs (interlock.c) and the Go
// bindings bpf2go generates from them; the objects are committed so that
// building needs no clang. agent/datapath loads, attaches and pins them.
package bpf

//go:generate go tool bpf2go -cc clang -strip llvm-strip -target bpfel -type origin -type tuple -type rule -type rule_set -type resolver -type config -type deny_event -type unix_path -type unix_allow_key -type verdict_query -type verdict -type deny_reason Interlock interlock.c -- -O2 -g -Wall -Werror -mcpu=v3 -I. -Iinclude
