package credential_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
	"github.com/backlog/controlplane/services/credential/credentialtest"
)

// TestConsoleSignIns: a pending console sign-in is made with a member's
// personal access token only, redeemed once, and gone after its TTL.
func TestConsoleSignIns(t *testing.T) {
	env := credentialtest.Start(t)
	client := consolev1.NewConsoleServiceClient(env.Conn)
	ws, owner := env.NewWorkspace(t, "Console")
	memberID, member := env.NewMember(t, ws, owner, "member")
	ctx := context.Background()
	hash := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

	t.Run("create and redeem once", func(t *testing.T) {
		before := time.Now()
		resp, err := client.CreateSignIn(credentialtest.As(ctx, member), &consolev1.CreateSignInRequest{CodeHash: hash("one"), Sealed: []byte("sealed-by-gateway")})
		if err != nil {
			t.Fatal(err)
		}
		if exp := resp.GetExpiresAt().AsTime(); exp.Before(before.Add(4*time.Minute)) || exp.After(time.Now().Add(6*time.Minute)) {
			t.Errorf("expires at %v, want about 5 minutes from now", exp)
		}
		got, err := client.RedeemSignIn(ctx, &consolev1.RedeemSignInRequest{CodeHash: hash("one")})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.GetSealed(), []byte("sealed-by-gateway")) || got.GetWorkspaceId() != ws || got.GetMemberId() != memberID {
			t.Errorf("redeemed %v", got)
		}
		if _, err := client.RedeemSignIn(ctx, &consolev1.RedeemSignInRequest{CodeHash: hash("one")}); code(err) != codes.NotFound {
			t.Errorf("second redemption: %v, want NotFound", err)
		}
		if _, err := client.CreateSignIn(credentialtest.As(ctx, owner), &consolev1.CreateSignInRequest{CodeHash: hash("unknown-yet"), Sealed: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.RedeemSignIn(ctx, &consolev1.RedeemSignInRequest{CodeHash: hash("never-made")}); code(err) != codes.NotFound {
			t.Errorf("an unknown code: %v, want NotFound", err)
		}
	})

	t.Run("expires", func(t *testing.T) {
		if _, err := client.CreateSignIn(credentialtest.As(ctx, owner), &consolev1.CreateSignInRequest{CodeHash: hash("short"), Sealed: []byte("x"), TtlSeconds: 1}); err != nil {
			t.Fatal(err)
		}
		// An ended session is remembered until it would have expired.
		if _, err := client.EndSession(credentialtest.As(ctx, member), &consolev1.EndSessionRequest{SessionHash: hash("session-4"), ExpiresAt: timestamppb.New(time.Now().Add(time.Second))}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2100 * time.Millisecond) // expiry is kept to the second
		if _, err := client.RedeemSignIn(ctx, &consolev1.RedeemSignInRequest{CodeHash: hash("short")}); code(err) != codes.NotFound {
			t.Errorf("an expired code: %v, want NotFound", err)
		}
		if r, err := client.CheckSession(ctx, &consolev1.CheckSessionRequest{SessionHash: hash("session-4")}); err != nil || r.GetEnded() {
			t.Errorf("an ended session is remembered past its expiry: %v %v", r, err)
		}
	})

	t.Run("ended sessions", func(t *testing.T) {
		check := func(h []byte) bool {
			t.Helper()
			r, err := client.CheckSession(ctx, &consolev1.CheckSessionRequest{SessionHash: h})
			if err != nil {
				t.Fatal(err)
			}
			return r.GetEnded()
		}
		if check(hash("session-1")) {
			t.Fatal("a live session reads as ended")
		}
		exp := timestamppb.New(time.Now().Add(time.Hour))
		if _, err := client.EndSession(ctx, &consolev1.EndSessionRequest{SessionHash: hash("session-1"), ExpiresAt: exp}); code(err) != codes.Unauthenticated {
			t.Errorf("ending without a token: %v", err)
		}
		if _, err := client.EndSession(credentialtest.As(ctx, env.OperatorToken), &consolev1.EndSessionRequest{SessionHash: hash("session-1"), ExpiresAt: exp}); code(err) != codes.PermissionDenied {
			t.Errorf("ending with the operator token: %v", err)
		}
		if _, err := client.EndSession(credentialtest.As(ctx, member), &consolev1.EndSessionRequest{SessionHash: hash("session-1"), ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
		if !check(hash("session-1")) || check(hash("session-2")) {
			t.Error("the ended session is not, or another one is, reported ended")
		}
		// A session that has expired already needs no record.
		if _, err := client.EndSession(credentialtest.As(ctx, member), &consolev1.EndSessionRequest{SessionHash: hash("session-3"), ExpiresAt: timestamppb.New(time.Now().Add(-time.Minute))}); err != nil || check(hash("session-3")) {
			t.Errorf("an expired session: %v", err)
		}
		if _, err := client.CheckSession(ctx, &consolev1.CheckSessionRequest{SessionHash: []byte("x")}); code(err) != codes.InvalidArgument {
			t.Errorf("a short hash: %v", err)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		cases := []struct {
			name  string
			token string
			req   *consolev1.CreateSignInRequest
			want  codes.Code
		}{
			{"no token", "", &consolev1.CreateSignInRequest{CodeHash: hash("a"), Sealed: []byte("x")}, codes.Unauthenticated},
			{"operator token", env.OperatorToken, &consolev1.CreateSignInRequest{CodeHash: hash("a"), Sealed: []byte("x")}, codes.PermissionDenied},
			{"short hash", owner, &consolev1.CreateSignInRequest{CodeHash: []byte("short"), Sealed: []byte("x")}, codes.InvalidArgument},
			{"nothing sealed", owner, &consolev1.CreateSignInRequest{CodeHash: hash("a")}, codes.InvalidArgument},
			{"too much sealed", owner, &consolev1.CreateSignInRequest{CodeHash: hash("a"), Sealed: make([]byte, 5000)}, codes.InvalidArgument},
			{"ttl too long", owner, &consolev1.CreateSignInRequest{CodeHash: hash("a"), Sealed: []byte("x"), TtlSeconds: 3600}, codes.InvalidArgument},
			{"hash reused", owner, &consolev1.CreateSignInRequest{CodeHash: hash("unknown-yet"), Sealed: []byte("x")}, codes.InvalidArgument},
		}
		for _, c := range cases {
			cctx := ctx
			if c.token != "" {
				cctx = credentialtest.As(ctx, c.token)
			}
			if _, err := client.CreateSignIn(cctx, c.req); code(err) != c.want {
				t.Errorf("%s: %v, want %s", c.name, err, c.want)
			}
		}
		if _, err := client.RedeemSignIn(ctx, &consolev1.RedeemSignInRequest{CodeHash: []byte("short")}); code(err) != codes.InvalidArgument {
			t.Errorf("redeem a short hash: %v", err)
		}
	})
}
