package console

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
)

// sealer seals small values with AES-256-GCM; the output is
// base64url(nonce ‖ ciphertext ‖ tag).
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: a}, nil
}

func (s *sealer) seal(plain, aad []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	_, _ = rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plain, aad)
}

func (s *sealer) open(sealed, aad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, errors.New("sealed value too short")
	}
	return s.aead.Open(nil, sealed[:n], sealed[n:], aad)
}

var (
	sessionAAD = []byte("backlog console session v1")
	linkAAD    = "backlog console sign-in v1 "
)

// session is what the cookie holds, sealed.
type session struct {
	Token     string `json:"t"`
	ID        string `json:"s"` // random: the CSRF token is derived from it
	ExpiresAt int64  `json:"e"` // unix seconds
}

// maxCookieBytes bounds a cookie value worth opening.
const maxCookieBytes = 2048

// sessionFrom opens the request's session cookie; nil when there is none,
// it does not open, or it has expired.
func (c *Console) sessionFrom(r *http.Request) *session {
	ck, err := r.Cookie(CookieName)
	if err != nil || len(ck.Value) > maxCookieBytes {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(ck.Value)
	if err != nil {
		return nil
	}
	plain, err := c.sessions.open(raw, sessionAAD)
	if err != nil {
		return nil
	}
	var s session
	if json.Unmarshal(plain, &s) != nil || s.Token == "" || s.ID == "" {
		return nil
	}
	if c.cfg.Now().Unix() >= s.ExpiresAt {
		return nil
	}
	return &s
}

// startSession sets a new session cookie for token.
func (c *Console) startSession(w http.ResponseWriter, r *http.Request, token string) *session {
	s := &session{Token: token, ID: randomString(16), ExpiresAt: c.cfg.Now().Add(c.cfg.SessionTTL).Unix()}
	plain, _ := json.Marshal(s)
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    base64.RawURLEncoding.EncodeToString(c.sessions.seal(plain, sessionAAD)),
		Path:     Prefix,
		MaxAge:   int(c.cfg.SessionTTL / time.Second),
		Expires:  time.Unix(s.ExpiresAt, 0),
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	return s
}

// endSession drops the session cookie.
func endSession(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: "", Path: Prefix, MaxAge: -1, Expires: time.Unix(0, 0),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
}

// live checks with the credential service that s was not signed out
// (through any replica). It answers for itself when it returns false.
func (c *Console) live(w http.ResponseWriter, r *http.Request, s *session) bool {
	h := sha256.Sum256([]byte(s.ID))
	ctx, cancel := withTimeout(c.outgoing(r, ""))
	defer cancel()
	resp, err := c.cfg.SignIns.CheckSession(ctx, &consolev1.CheckSessionRequest{SessionHash: h[:]})
	if err != nil {
		c.lg.Warn("console session not checked", zap.String("code", status.Code(err).String()))
		writeError(w, http.StatusServiceUnavailable, codes.Unavailable, "the credential service did not answer; try again shortly")
		return false
	}
	if resp.GetEnded() {
		endSession(w, r)
		writeError(w, http.StatusUnauthorized, codes.Unauthenticated, "this session was signed out: sign in again")
		return false
	}
	return true
}

// csrfToken is the session's CSRF token: an HMAC of its id.
func (c *Console) csrfToken(s *session) string {
	m := hmac.New(sha256.New, c.csrfKey)
	m.Write([]byte(s.ID))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkWrite refuses a state-changing request that did not come from the
// console's own origin or, with a session, lacks its CSRF token.
func (c *Console) checkWrite(w http.ResponseWriter, r *http.Request, s *session) bool {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, codes.PermissionDenied, "refused: this request did not come from the console's own page (cross-site request)")
		return false
	}
	if s != nil {
		got := r.Header.Get(CSRFHeader)
		want := c.csrfToken(s)
		if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			writeError(w, http.StatusForbidden, codes.PermissionDenied, "refused: the request's CSRF token is missing or wrong; reload the console and try again")
			return false
		}
	}
	return true
}

// sameOrigin reports whether a browser says the request came from this
// host: Sec-Fetch-Site, when sent, is same-origin, and Origin is this host.
func sameOrigin(r *http.Request) bool {
	if sfs := r.Header.Get("Sec-Fetch-Site"); sfs != "" && sfs != "same-origin" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return false
	}
	u, err := url.Parse(o)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// whoami is the REST whoami answer, as the console reads it.
type whoami struct {
	Kind        string   `json:"kind"`
	WorkspaceID string   `json:"workspaceId"`
	SubjectID   string   `json:"subjectId"`
	Name        string   `json:"name"`
	Role        string   `json:"role"`
	Scopes      []string `json:"scopes"`
}

// sessionInfo is what GET /console/session answers.
type sessionInfo struct {
	whoami
	CSRFToken string `json:"csrfToken"`
	ExpiresAt string `json:"expiresAt"`
}

// apiError is a REST error body.
type apiError struct {
	status  int
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// whoamiFor asks the REST API who token is, through the same handler as
// every REST call.
func (c *Console) whoamiFor(r *http.Request, token string) (*whoami, *apiError) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "/v1/auth/whoami", nil)
	if err != nil {
		return nil, &apiError{status: http.StatusInternalServerError, Code: int(codes.Internal), Message: "internal error"}
	}
	req.RemoteAddr = r.RemoteAddr
	req.Host = r.Host
	req.Header.Set("Authorization", "Bearer "+token)
	bw := &bufferWriter{header: http.Header{}}
	c.cfg.API.ServeHTTP(bw, req)
	if bw.status() != http.StatusOK {
		e := &apiError{status: bw.status()}
		if json.Unmarshal(bw.body.Bytes(), e) != nil || e.Message == "" {
			e.Code, e.Message = int(codes.Unavailable), "the credential service did not answer; try again shortly"
		}
		return nil, e
	}
	var who whoami
	if err := json.Unmarshal(bw.body.Bytes(), &who); err != nil {
		return nil, &apiError{status: http.StatusBadGateway, Code: int(codes.Internal), Message: "unexpected answer from the credential service"}
	}
	return &who, nil
}

// signIn checks that token is a workspace member's personal access token
// and starts a session for it.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request, token string) {
	if !strings.HasPrefix(token, "blg_pat_") {
		writeError(w, http.StatusBadRequest, codes.InvalidArgument,
			"token: paste a personal access token (it starts with blg_pat_); automation secrets, access tokens and agent keys cannot sign in to the console")
		return
	}
	who, e := c.whoamiFor(r, token)
	if e != nil {
		writeError(w, e.status, codes.Code(e.Code), e.Message)
		return
	}
	if who.Kind != "member" || who.WorkspaceID == "" {
		writeError(w, http.StatusBadRequest, codes.InvalidArgument, "token: only a workspace member's personal access token can sign in to the console")
		return
	}
	s := c.startSession(w, r, token)
	c.lg.Info("console sign-in", zap.String("workspace-id", who.WorkspaceID), zap.String("member-id", who.SubjectID))
	writeJSON(w, http.StatusOK, c.info(who, s))
}

func (c *Console) info(who *whoami, s *session) sessionInfo {
	return sessionInfo{whoami: *who, CSRFToken: c.csrfToken(s), ExpiresAt: time.Unix(s.ExpiresAt, 0).UTC().Format(time.RFC3339)}
}

// serveSession: GET tells who is signed in (and the CSRF token); POST
// {"token": …} signs in with a personal access token.
func (c *Console) serveSession(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	switch r.Method {
	case http.MethodGet:
		s := c.sessionFrom(r)
		if s == nil {
			writeError(w, http.StatusUnauthorized, codes.Unauthenticated, "not signed in")
			return
		}
		if !c.live(w, r, s) {
			return
		}
		who, e := c.whoamiFor(r, s.Token)
		if e != nil {
			if e.status == http.StatusUnauthorized || e.status == http.StatusForbidden {
				endSession(w, r)
				e.status, e.Code = http.StatusUnauthorized, int(codes.Unauthenticated)
				e.Message = "your session has ended: " + e.Message
			}
			writeError(w, e.status, codes.Code(e.Code), e.Message)
			return
		}
		writeJSON(w, http.StatusOK, c.info(who, s))
	case http.MethodPost:
		if !c.checkWrite(w, r, nil) {
			return
		}
		var body struct {
			Token string `json:"token"`
		}
		if !readJSON(w, r, &body) {
			return
		}
		c.signIn(w, r, strings.TrimSpace(body.Token))
	default:
		methodNotAllowed(w, "GET, POST")
	}
}

// serveRedeem: POST {"code": …} signs in with a one-time link's code.
func (c *Console) serveRedeem(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	if !c.checkWrite(w, r, nil) {
		return
	}
	var body struct {
		Code string `json:"code"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	code, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(body.Code))
	if err != nil || len(code) != 32 {
		writeError(w, http.StatusBadRequest, codes.InvalidArgument, "code: this is not a console sign-in code; copy the whole link that ./backlog.sh console printed")
		return
	}
	h := sha256.Sum256(code)
	ctx, cancel := withTimeout(c.outgoing(r, ""))
	defer cancel()
	resp, err := c.cfg.SignIns.RedeemSignIn(ctx, &consolev1.RedeemSignInRequest{CodeHash: h[:]})
	if err != nil {
		st := status.Convert(err)
		if st.Code() == codes.NotFound || st.Code() == codes.InvalidArgument {
			writeError(w, http.StatusUnauthorized, codes.Unauthenticated, st.Message())
			return
		}
		c.lg.Warn("console sign-in link not redeemed", zap.String("code", st.Code().String()))
		writeError(w, http.StatusServiceUnavailable, codes.Unavailable, "the credential service did not answer; try the link again shortly")
		return
	}
	token, err := c.links.open(resp.GetSealed(), append([]byte(linkAAD), h[:]...))
	if err != nil {
		// Made by a gateway with another key (no shared forwarding token).
		writeError(w, http.StatusUnauthorized, codes.Unauthenticated, "this sign-in link was made by another gateway that does not share this one's key: run ./backlog.sh console again")
		return
	}
	c.signIn(w, r, string(token))
}

// serveSignOut: POST ends the session.
func (c *Console) serveSignOut(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	s := c.sessionFrom(r)
	if s != nil && !c.checkWrite(w, r, s) {
		return
	}
	endSession(w, r)
	if s != nil {
		// Remembered by the credential service, so that a copy of the
		// cookie stops working on every replica too.
		h := sha256.Sum256([]byte(s.ID))
		ctx, cancel := withTimeout(c.outgoing(r, s.Token))
		defer cancel()
		_, err := c.cfg.SignIns.EndSession(ctx, &consolev1.EndSessionRequest{SessionHash: h[:], ExpiresAt: timestamppb.New(time.Unix(s.ExpiresAt, 0))})
		switch st := status.Convert(err); {
		case err == nil:
		case st.Code() == codes.Unauthenticated || st.Code() == codes.PermissionDenied:
			// The token no longer works: the session is dead anyway.
		default:
			c.lg.Warn("console sign-out not recorded", zap.String("code", st.Code().String()))
			writeError(w, http.StatusServiceUnavailable, codes.Unavailable, "signed out in this browser, but the server could not record it: sign out again shortly, or revoke the token if this browser's cookie may have been copied")
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// linkResponse answers POST /console/sign-in-links.
type linkResponse struct {
	// Path is the link below the gateway's base URL; its code is in the
	// fragment, which browsers never send to a server.
	Path      string `json:"path"`
	ExpiresAt string `json:"expiresAt"`
}

// serveCreateLink: POST with a personal access token as Bearer makes a
// one-time sign-in link for that token (what `backlog console` prints).
func (c *Console) serveCreateLink(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	token = strings.TrimSpace(token)
	if !ok || token == "" {
		writeError(w, http.StatusUnauthorized, codes.Unauthenticated, "missing credential: send your personal access token as Authorization: Bearer blg_pat_…")
		return
	}
	if !strings.HasPrefix(token, "blg_pat_") {
		writeError(w, http.StatusBadRequest, codes.InvalidArgument, "only a personal access token (blg_pat_…) can make a console sign-in link: run ./backlog.sh auth use personal")
		return
	}
	code := make([]byte, 32)
	_, _ = rand.Read(code)
	h := sha256.Sum256(code)
	sealed := c.links.seal([]byte(token), append([]byte(linkAAD), h[:]...))
	ctx, cancel := withTimeout(c.outgoing(r, token))
	defer cancel()
	resp, err := c.cfg.SignIns.CreateSignIn(ctx, &consolev1.CreateSignInRequest{
		CodeHash: h[:], Sealed: sealed, TtlSeconds: int32(c.cfg.LinkTTL / time.Second),
	})
	if err != nil {
		st := status.Convert(err)
		hs := httpStatus(st.Code())
		msg := st.Message()
		if hs >= 500 {
			c.lg.Warn("console sign-in link not made", zap.String("code", st.Code().String()))
			msg = "the credential service did not answer; try again shortly"
		}
		writeError(w, hs, st.Code(), msg)
		return
	}
	writeJSON(w, http.StatusOK, linkResponse{
		Path:      "/console/sign-in#code=" + base64.RawURLEncoding.EncodeToString(code),
		ExpiresAt: resp.GetExpiresAt().AsTime().UTC().Format(time.RFC3339),
	})
}

// outgoing is the context of a call to the credential service: the request
// id and client IP the gateway forwards, and token as the bearer when set.
func (c *Console) outgoing(r *http.Request, token string) context.Context {
	md := metadata.MD{}
	if c.cfg.Metadata != nil {
		md = metadata.Join(md, c.cfg.Metadata(r))
	}
	if token != "" {
		md.Set("authorization", "Bearer "+token)
	}
	return metadata.NewOutgoingContext(r.Context(), md)
}

// serveAPI forwards /console/api/v1/… to the REST handler as /v1/… with the
// session's token.
func (c *Console) serveAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	s := c.sessionFrom(r)
	if s == nil {
		writeError(w, http.StatusUnauthorized, codes.Unauthenticated, "not signed in, or the session has expired: sign in again")
		return
	}
	if !readOnly(r.Method) && !c.checkWrite(w, r, s) {
		return
	}
	if !c.live(w, r, s) {
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.TrimPrefix(r.URL.Path, apiPrefix)
	if r.URL.RawPath != "" {
		r2.URL.RawPath = strings.TrimPrefix(r.URL.RawPath, apiPrefix)
	}
	r2.RequestURI = ""
	r2.Header.Del("Cookie")
	r2.Header.Del(CSRFHeader)
	r2.Header.Set("Authorization", "Bearer "+s.Token)
	c.cfg.API.ServeHTTP(w, r2)
}

// httpStatus maps a gRPC code as the REST gateway does.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.InvalidArgument, codes.OutOfRange, codes.FailedPrecondition:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

// maxSessionBody bounds the session routes' request bodies.
const maxSessionBody = 8 << 10

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, codes.InvalidArgument, "send the body as application/json")
		return false
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxSessionBody))
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, codes.InvalidArgument, "the body is not the JSON object expected")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	buf, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, codes.Internal, "internal error")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(buf, '\n'))
}

// writeError answers in the REST API's error shape.
func writeError(w http.ResponseWriter, httpCode int, code codes.Code, msg string) {
	buf, _ := json.Marshal(map[string]any{"code": int(code), "message": msg, "details": []any{}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if httpCode == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="backlog"`) // as every 401 of the REST API
	}
	w.WriteHeader(httpCode)
	_, _ = w.Write(append(buf, '\n'))
}

func notFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, codes.NotFound, "no such page in the console")
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, codes.Unimplemented, "method not allowed")
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// bufferWriter collects a response in memory.
type bufferWriter struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferWriter) Header() http.Header { return b.header }
func (b *bufferWriter) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}
func (b *bufferWriter) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.body.Write(p)
}
func (b *bufferWriter) status() int {
	if b.code == 0 {
		return http.StatusOK
	}
	return b.code
}
