package daemon_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// rawCodec carries gRPC messages as the bytes they are, so the test's
// service needs no generated code: every message is a *[]byte.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// echoService is a gRPC service registered by hand: Chat (bidirectional
// streaming) answers each message and ends with a trailer counting them;
// Admin (unary) is what the policy denies, and counts the calls that
// reached it.
type echoService struct{ adminCalls atomic.Int32 }

func (s *echoService) desc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "echo.Echo",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{StreamName: "Chat", ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, stream grpc.ServerStream) error {
				n := 0
				for {
					var msg []byte
					if err := stream.RecvMsg(&msg); errors.Is(err, io.EOF) {
						stream.SetTrailer(metadata.Pairs("x-count", fmt.Sprint(n)))
						return nil
					} else if err != nil {
						return err
					}
					n++
					answer := []byte("echo " + string(msg))
					if err := stream.SendMsg(&answer); err != nil {
						return err
					}
				}
			}}},
		Methods: []grpc.MethodDesc{{MethodName: "Admin",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				s.adminCalls.Add(1)
				var msg []byte
				if err := dec(&msg); err != nil {
					return nil, err
				}
				return &msg, nil
			}}},
	}
}

// grpcClient is the agent's grpc-go client: it resolves addr's name and
// verifies the server with the environment `interlock exec` gave it, has
// a Chat of three messages and calls Admin, and describes both.
func grpcClient(addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No RootCAs: the system pool, which SSL_CERT_FILE names.
	conn, err := grpc.NewClient("dns:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{})),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/echo.Echo/Chat")
	if err != nil {
		return "", fmt.Errorf("chat: %w", err)
	}
	var answers []string
	for _, m := range []string{"a", "b", "c"} {
		msg := []byte(m)
		if err := stream.SendMsg(&msg); err != nil {
			return "", fmt.Errorf("chat send: %w", err)
		}
		// Each answer before the next message: the stream is live both ways.
		var answer []byte
		if err := stream.RecvMsg(&answer); err != nil {
			return "", fmt.Errorf("chat receive: %w", err)
		}
		answers = append(answers, string(answer))
	}
	if err := stream.CloseSend(); err != nil {
		return "", err
	}
	var extra []byte
	if err := stream.RecvMsg(&extra); !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("chat end: %v", err)
	}
	in, out := []byte("x"), []byte(nil)
	err = conn.Invoke(ctx, "/echo.Echo/Admin", &in, &out)
	return fmt.Sprintf("chat: %s count=%s; admin: %s %s", strings.Join(answers, ","), strings.Join(stream.Trailer().Get("x-count"), ","),
		status.Code(err), status.Convert(err).Message()), nil
}

// TestGRPCThroughIntercept: a grpc-go bidirectional stream works through
// interception, HTTP/2 on both sides, with its trailers; a denied method
// gets PERMISSION_DENIED naming the rule and never reaches the server.
func TestGRPCThroughIntercept(t *testing.T) {
	testenv.Privileged(t)
	dir := t.TempDir()
	public, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "public-ca"), PublicCert: filepath.Join(dir, "upstream-ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := public.Leaf("grpc.test")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &echoService{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(leaf)), grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(svc.desc(), nil)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	port := ln.Addr().(*net.TCPAddr).Port

	res := startResolver(t)
	res.answer("grpc.test.", "127.0.0.1")
	pol, conf := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: rpc, protocol: http, hosts: [grpc.test], port: %d, tls: intercept, upstream_ca: %s}
rules:
  - {name: no-admin-rpc, identity: ci-bot, target: rpc, http: {paths: [/echo.Echo/Admin]}, action: deny}
  - {name: rpc-ok, identity: ci-bot, target: rpc, http: {methods: [POST]}, action: allow}
`, port, public.PublicCertPath())), 0o644)
	os.WriteFile(conf, []byte(fmt.Sprintf("dns_resolvers: [%q]\n", res.addr)), 0o644)
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: conf})
	f := &fixture{d: d, agent: agentBinary(t)}

	r := f.run(t, "ci-bot", "grpc", fmt.Sprintf("grpc.test:%d", port), unprivileged...)
	const want = "chat: echo a,echo b,echo c count=3; admin: PermissionDenied "
	if r.Err != "" || !strings.HasPrefix(r.Line, want) || !strings.Contains(r.Line, "no-admin-rpc") {
		t.Fatalf("grpc through interception: %+v, want %q…no-admin-rpc", r, want)
	}
	if n := svc.adminCalls.Load(); n != 0 {
		t.Errorf("the denied method reached the server %d times", n)
	}
	closed := waitEvent(t, d, "connection_close", func(m map[string]any) bool { return m["target"] == "rpc" && m["outcome"] == "closed" })
	tr, _, err := d.CLI("replay", fmt.Sprint(closed["conn"]))
	if err != nil || !strings.Contains(tr, "POST /echo.Echo/Chat HTTP/2.0") || !strings.Contains(tr, "decision: deny by rule no-admin-rpc") {
		t.Errorf("replay of the gRPC session: %v\n%s", err, tr)
	}
}
