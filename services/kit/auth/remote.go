package auth

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// CacheTTL bounds how long a cached principal may be served. The credential
// service waits at most this long for every watcher to acknowledge a
// revocation, so when a revoking call returns, no service can still serve a
// principal it cached before the revocation: either the watcher dropped it,
// or it aged out.
const CacheTTL = 2 * time.Second

// Remote authenticates by asking the credential service over gRPC, caching
// answers while (and only while) its revocation watch is connected.
type Remote struct {
	// Forward, when set, gives the metadata (key, value pairs) each
	// Authenticate call carries about the call being authenticated: the end
	// client's IP (as this service resolved it) and the request id, so that
	// the credential service's audit record of a refused credential names
	// them rather than this service's address. Set it before first use.
	Forward func(ctx context.Context) []string

	client credentialv1.CredentialInternalServiceClient
	// watched are the credential replicas whose revocation streams Watch
	// follows (each replica fans out the revocations made on it); caching
	// is on only while every one of them is connected.
	watched []credentialv1.CredentialInternalServiceClient
	lg      *zap.Logger
	now     func() time.Time

	mu        sync.Mutex
	cache     map[[32]byte]cached
	bySubject map[string][][32]byte // subject id → its cache keys
	epoch     uint64                // bumped by every invalidation
	watching  bool                  // every watched stream is live
	live      map[int]bool
	lastReset time.Time
}

type cached struct {
	p       *Principal
	expires time.Time
}

const maxCacheEntries = 100_000

// NewRemote returns an authenticator backed by the credential service. Call
// Watch in a goroutine to enable caching.
func NewRemote(client credentialv1.CredentialInternalServiceClient, lg *zap.Logger) *Remote {
	return &Remote{client: client, watched: []credentialv1.CredentialInternalServiceClient{client}, lg: lg, now: time.Now,
		cache: map[[32]byte]cached{}, bySubject: map[string][][32]byte{}, live: map[int]bool{}}
}

// WatchReplicas makes Watch follow the revocation stream of each of
// replicas (a connection to each credential replica on its own) instead of
// the one client: a revocation made on any replica reaches this cache, and
// the replica that made it waits for this cache's acknowledgement. Call it
// before Watch.
func (r *Remote) WatchReplicas(replicas ...credentialv1.CredentialInternalServiceClient) {
	if len(replicas) > 0 {
		r.watched = replicas
	}
}

// Authenticate implements Authenticator.
func (r *Remote) Authenticate(ctx context.Context, raw string) (*Principal, error) {
	key := sha256.Sum256([]byte(raw))
	sent := r.now()
	r.mu.Lock()
	if c, ok := r.cache[key]; ok && r.watching && sent.Before(c.expires) {
		r.mu.Unlock()
		return c.p, nil
	}
	epoch, watching := r.epoch, r.watching
	r.mu.Unlock()

	out := ctx
	if r.Forward != nil {
		if kv := r.Forward(ctx); len(kv) > 0 && len(kv)%2 == 0 {
			out = metadata.AppendToOutgoingContext(ctx, kv...)
		}
	}
	resp, err := r.client.Authenticate(out, &credentialv1.AuthenticateRequest{Credential: raw})
	if err != nil {
		return nil, err
	}
	p := resp.GetPrincipal()
	if !watching {
		return p, nil
	}
	exp := sent.Add(CacheTTL) // from when we asked: an answer can be no fresher
	if t := p.GetExpiresAt(); t != nil && t.AsTime().Before(exp) {
		exp = t.AsTime()
	}
	r.mu.Lock()
	// Cache only if nothing was invalidated while we asked: the answer may
	// predate a revocation we have already applied.
	if r.epoch == epoch && r.watching {
		if len(r.cache) >= maxCacheEntries {
			clear(r.cache)
			clear(r.bySubject)
		}
		if _, had := r.cache[key]; !had {
			r.bySubject[p.GetSubjectId()] = append(r.bySubject[p.GetSubjectId()], key)
		}
		r.cache[key] = cached{p: p, expires: exp}
	}
	r.mu.Unlock()
	return proto.CloneOf(p), nil
}

func (r *Remote) invalidate(subjects []string, reset bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.epoch++
	if reset {
		clear(r.cache)
		clear(r.bySubject)
		return
	}
	for _, s := range subjects {
		for _, k := range r.bySubject[s] {
			delete(r.cache, k)
		}
		delete(r.bySubject, s)
	}
}

func (r *Remote) setWatching(i int, on bool) {
	r.mu.Lock()
	if on {
		r.live[i] = true
	} else {
		delete(r.live, i)
	}
	r.watching = len(r.live) == len(r.watched)
	r.epoch++
	clear(r.cache)
	clear(r.bySubject)
	r.mu.Unlock()
}

// Watch follows the credential service's revocation streams (one per
// watched replica) until ctx ends, reconnecting with backoff. While any is
// disconnected nothing is cached.
func (r *Remote) Watch(ctx context.Context) {
	var wg sync.WaitGroup
	for i, c := range r.watched {
		wg.Go(func() { r.watch(ctx, i, c) })
	}
	wg.Wait()
}

func (r *Remote) watch(ctx context.Context, i int, client credentialv1.CredentialInternalServiceClient) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := r.watchOnce(ctx, i, client)
		r.setWatching(i, false)
		if ctx.Err() != nil {
			return
		}
		r.lg.Debug("revocation watch interrupted; caching off until it reconnects", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (r *Remote) watchOnce(ctx context.Context, i int, client credentialv1.CredentialInternalServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchRevocations(ctx)
	if err != nil {
		return err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return err
		}
		if ev.GetSequence() == 0 {
			// The opening event: the stream is live, caching may start.
			r.setWatching(i, true)
		} else {
			r.invalidate(ev.GetSubjectIds(), ev.GetDropAll())
		}
		if err := stream.Send(&credentialv1.WatchRevocationsRequest{AckSequence: ev.GetSequence()}); err != nil {
			return err
		}
	}
}
