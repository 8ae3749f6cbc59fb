// Package mount is the one way a control-plane service is put on a gRPC
// server: the binary (backlogd) and every service test use it, so tests
// exercise the production wiring — the kit server's interceptors (request
// ids, logging, metrics, panic recovery, the error table, authentication,
// the service-credential check on internal methods), the service itself,
// AdminService over its store, health and reflection.
package mount

import (
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/backlog/controlplane/services/kit/admin"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/server"
	"github.com/backlog/controlplane/services/kit/store"
)

// Service is what every store-owning service offers the process serving it.
type Service interface {
	// Register puts the service's gRPC services on r.
	Register(r grpc.ServiceRegistrar)
	// Errors maps the service's errors to gRPC statuses.
	Errors() *errs.Table
	// NoAuth reports methods that take no bearer credential (they check
	// their own, e.g. an exchange or an agent's self-rotation).
	NoAuth(fullMethod string) bool
	// DB is the service's store (served by AdminService for backups).
	DB() store.Backend
}

// Internal is implemented by services with internal methods: only sibling
// services, presenting the service credential, may call them.
type Internal interface {
	Internal(fullMethod string) bool
}

// Options are the process's side of the wiring.
type Options struct {
	Name   string // "credential", "automation", …
	Logger *zap.Logger
	Auth   auth.Authenticator // how bearer credentials are checked
	// ServiceToken is the service credential: internal methods require it,
	// only a caller presenting it may name the client IP, and page tokens
	// are signed with a key derived from it (see server.Config).
	ServiceToken  string
	ServerOptions []grpc.ServerOption
}

// New builds the server for svc.
func New(svc Service, o Options) *server.Server {
	internal := admin.IsAdminMethod
	if in, ok := svc.(Internal); ok {
		internal = Either(in.Internal, admin.IsAdminMethod)
	}
	srv := server.New(server.Config{
		Name: o.Name, Logger: o.Logger, Errors: svc.Errors(), Auth: o.Auth,
		NoAuth:   Either(svc.NoAuth, admin.IsAdminMethod),
		Internal: internal, ServiceToken: o.ServiceToken, Options: o.ServerOptions,
	})
	svc.Register(srv.GRPC)
	(&admin.Server{DB: svc.DB()}).Register(srv.GRPC)
	if p, ok := svc.DB().(store.Pinger); ok {
		srv.AddCheck(p.Ping) // a shared store that stops answering makes the service not ready
	}
	return srv
}

// Either reports true when any of fs does.
func Either(fs ...func(string) bool) func(string) bool {
	return func(m string) bool {
		for _, f := range fs {
			if f(m) {
				return true
			}
		}
		return false
	}
}
