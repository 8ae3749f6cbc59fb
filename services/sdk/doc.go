// Package sdk is the Go SDK of the Backlog control plane, for the rest of
// Backlog.
//
// A resource server (an issues service, a wiki, anything that takes
// Backlog credentials) verifies its callers with a Verifier, exactly as the
// control plane's own services do: bearer access tokens, agent API keys and
// personal tokens are resolved by the credential service, cached for at
// most two seconds and only while a revocation watch on every credential
// replica is live and acknowledged. So a credential that is revoked — its
// automation suspended or deleted, its secret rotated, its member removed —
// is refused on the very next request after the revoking call returns. A
// raw automation secret is refused with the advice to exchange it first.
//
//	v, err := sdk.NewVerifier([]string{"cred-a:9101,cred-b:9101"},
//		sdk.WithServiceTokenFile("/etc/backlog/service-token"),
//		sdk.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
//	…
//	grpc.NewServer(grpc.ChainUnaryInterceptor(v.UnaryServerInterceptor()),
//		grpc.ChainStreamInterceptor(v.StreamServerInterceptor()))
//	http.Handle("/", v.Middleware(mux))
//
// Handlers then read the caller (CallerFrom) and check what it may do:
// RequireWorkspace (another workspace is 404), RequireScope and RequireTeam
// (403), or Require for all three. Refusals are gRPC statuses carrying an
// ErrorInfo reason; WriteError answers an HTTP request with one in the REST
// contract's JSON shape.
//
// A program holding an automation secret keeps a fresh access token with a
// TokenSource: it exchanges the secret, caches the token, re-exchanges
// before expiry (with jitter, once for all goroutines), and plugs into gRPC
// (grpc.WithPerRPCCredentials) and net/http (Transport). A secret that was
// rotated or deleted, or an automation that is suspended, gives a clear
// error (ErrSecretRefused, ErrAutomationSuspended) instead of a retry storm.
//
//	ts, err := sdk.NewTokenSource(os.Getenv("BACKLOG_SECRET"),
//		sdk.HTTPExchanger{BaseURL: "https://backlog.example.com"})
//	client := &http.Client{Transport: ts.Transport(nil)}
//
// The module imports the control plane's generated protobuf API (gen/)
// and nothing else of it.
package sdk
