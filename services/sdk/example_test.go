package sdk_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/backlog/controlplane/services/sdk"
)

// A gRPC resource server: every call's bearer credential is verified, and
// the handler checks what the caller may do.
func ExampleVerifier_UnaryServerInterceptor() {
	v, err := sdk.NewVerifier([]string{"cred-a.internal:9101,cred-b.internal:9101"},
		sdk.WithServiceTokenFile("/etc/backlog/service-token"),
		sdk.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13})))
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(v.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(v.StreamServerInterceptor()))
	_ = srv // register services, then srv.Serve(lis)
}

// A net/http resource server: a request without a valid credential is
// answered by the middleware (401, 403 or 503, the contract's JSON error);
// the handler sees only verified callers.
func ExampleVerifier_Middleware() {
	v, err := sdk.NewVerifier([]string{os.Getenv("BACKLOG_CREDENTIAL_ADDRS")},
		sdk.WithServiceTokenFile(os.Getenv("BACKLOG_SERVICE_TOKEN_FILE")))
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workspaces/{ws}/teams/{team}/issues", func(w http.ResponseWriter, r *http.Request) {
		c, err := sdk.Require(r.Context(), r.PathValue("ws"), "issues:write", r.PathValue("team"))
		if err != nil {
			sdk.WriteError(w, err)
			return
		}
		fmt.Fprintf(w, "created by %s %s\n", c.Kind, c.SubjectID)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:8090", v.Middleware(mux)))
}

// A mistyped credential is refused without a network call.
func ExampleParseCredential() {
	_, err := sdk.ParseCredential("blg_auto_0123456789abcdefXXXXXX")
	fmt.Println(err)
	// Output: credential checksum does not match: it was mistyped or truncated
}

// A handler checks workspace, scope and team of the verified caller.
func ExampleRequire() {
	caller := &sdk.Caller{Kind: sdk.CallerAutomation, WorkspaceID: "ws_1", Scopes: []string{"issues:write"}, TeamIDs: []string{"red"}}
	ctx := sdk.WithCaller(context.Background(), caller) // what the Verifier does

	if _, err := sdk.Require(ctx, "ws_1", "issues:write", "red"); err == nil {
		fmt.Println("allowed")
	}
	_, err := sdk.Require(ctx, "ws_1", "issues:write", "blue")
	fmt.Println(sdk.Reason(err), err)
	w := httptest.NewRecorder()
	sdk.WriteError(w, err)
	fmt.Println(w.Code, w.Body.String())
	// Output:
	// allowed
	// PERMISSION_DENIED rpc error: code = PermissionDenied desc = this credential is bounded to teams (red) and may not act in team blue
	// 403 {"code":7,"message":"this credential is bounded to teams (red) and may not act in team blue","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"PERMISSION_DENIED","domain":"backlog"}]}
}

// A program with an automation secret keeps a fresh access token for its
// HTTP calls.
func ExampleTokenSource_Transport() {
	ts, err := sdk.NewTokenSource(os.Getenv("BACKLOG_AUTOMATION_SECRET"),
		sdk.HTTPExchanger{BaseURL: "https://backlog.example.com"},
		sdk.WithTTL(15*time.Minute), sdk.WithScopes("issues:write"))
	if err != nil {
		log.Fatal(err)
	}
	client := &http.Client{Transport: ts.Transport(nil)}
	resp, err := client.Post("https://issues.example.com/v1/workspaces/ws_1/teams/red/issues", "application/json", nil)
	if err != nil {
		log.Fatal(err) // errors.Is(err, sdk.ErrSecretRefused) when the secret was rotated
	}
	resp.Body.Close()
}

// The same for gRPC: the TokenSource is the connection's per-call
// credentials.
func ExampleTokenSource_GetRequestMetadata() {
	credConn, err := grpc.NewClient("backlog-credential.internal:9101",
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13})))
	if err != nil {
		log.Fatal(err)
	}
	ts, err := sdk.NewTokenSource(os.Getenv("BACKLOG_AUTOMATION_SECRET"), sdk.GRPCExchanger{Conn: credConn})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("issues.internal:9300",
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13})),
		grpc.WithPerRPCCredentials(ts))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}
