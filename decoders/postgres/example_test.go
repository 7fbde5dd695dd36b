package postgres_test

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/policy/mask"
)

// Example shows one proxied session: accept the agent without its password,
// log in upstream with the session credential, greet the agent, relay.
func Example() {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	agent, _ := ln.Accept()
	ctx := context.Background()

	hello, err := postgres.AcceptClient(ctx, agent, postgres.ClientConfig{})
	if err != nil {
		agent.Close()
		return
	}
	if hello.Cancel != nil {
		// Look up the upstream key the proxy handed out as hello.Cancel,
		// dial the server and postgres.SendCancel(conn, upstreamKey).
		agent.Close()
		return
	}
	server, _ := net.Dial("tcp", "db.internal:5432")
	up, err := postgres.ConnectUpstream(ctx, server, postgres.UpstreamConfig{
		User: "v-agent-7f3a", Password: "from the credential source",
		Database: hello.Startup.Database, Parameters: hello.Startup.ForwardParameters(),
	})
	var serverErr *postgres.ServerError
	if errors.As(err, &serverErr) {
		postgres.WriteError(hello.Conn, serverErr.Response) // e.g. 28P01
	}
	if err != nil {
		agent.Close()
		server.Close()
		return
	}
	// The agent gets the proxy's own cancel key, mapped to up.Key.
	proxyKey := postgres.CancelKey{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}
	if err := postgres.GreetClient(hello.Conn, hello.Startup, up, proxyKey); err != nil {
		agent.Close()
		server.Close()
		return
	}
	// Masking: policy/mask decides what each value becomes; MaskText
	// carries it in the PostgreSQL wire format.
	pii, _ := mask.New("pii", []mask.ColumnRule{{Pattern: "email", Method: mask.Partial}, {Pattern: "ssn", Method: mask.Redact}}, nil, nil)
	maskPII := postgres.MaskText(func(columns []string) postgres.TextMasker {
		if p := pii.Plan(columns); p.Active() {
			return p
		}
		return nil
	})
	enforcer := postgres.EnforcerFunc(func(ctx context.Context, sql string) postgres.Verdict {
		switch {
		case strings.Contains(sql, "DROP"):
			return postgres.Verdict{Action: postgres.Deny, Rule: "no-ddl"}
		case strings.Contains(sql, "customers"):
			return postgres.Verdict{Rule: "mask-pii", Mask: maskPII}
		}
		return postgres.Verdict{Rule: "default-allow"}
	})
	err = postgres.Relay(ctx, hello.Conn, up.Conn, postgres.RelayConfig{Enforcer: enforcer})
	var violation *postgres.ProtocolError
	if errors.As(err, &violation) {
		// audit: the agent broke the protocol; it was told with 08P01
	}
}
