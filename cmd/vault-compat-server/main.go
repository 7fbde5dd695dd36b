// Command vault-compat-server runs the Vault-API-compatible TEST server
// (package agent/credentials/vaultcompat): the subset of Vault's HTTP API
// interlockd uses, with real effects on a PostgreSQL server and a real SSH
// CA. It is not Vault; it keeps everything in memory and has no policies.
//
//	vault-compat-server -config vault-compat.yaml -listen 127.0.0.1:8200
//
// On start it prints VAULT_ADDR=... and VAULT_TOKEN=... (the root token)
// on stdout. SIGUSR1 stops listening (clients get connection refused, as
// when Vault is down), SIGUSR2 listens again; SIGINT or SIGTERM revokes
// every live lease (drops its role) and exits.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"gopkg.in/yaml.v3"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vault-compat-server:", err)
		os.Exit(1)
	}
}

func run() error {
	configPath := flag.String("config", "", "YAML config file (see package vaultcompat's Config)")
	listen := flag.String("listen", "127.0.0.1:8200", "address to listen on")
	flag.Parse()
	var cfg vaultcompat.Config
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("parse config %s: %w", *configPath, err)
		}
	}
	srv, err := vaultcompat.New(cfg)
	if err != nil {
		return err
	}
	if err := srv.Start(*listen); err != nil {
		srv.Close()
		return err
	}
	// Signals are caught before the address is printed: whoever reads it
	// may signal at once.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2)
	fmt.Printf("VAULT_ADDR=%s\nVAULT_TOKEN=%s\n", srv.URL(), srv.RootToken())
	addr := srv.Addr()
	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			if err := srv.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "vault-compat-server: stop:", err)
			}
			fmt.Fprintln(os.Stderr, "vault-compat-server: stopped listening")
		case syscall.SIGUSR2:
			if err := srv.Start(addr); err != nil {
				fmt.Fprintln(os.Stderr, "vault-compat-server: start:", err)
				continue
			}
			fmt.Fprintln(os.Stderr, "vault-compat-server: listening on", addr)
		default:
			return srv.Close()
		}
	}
	return nil
}
