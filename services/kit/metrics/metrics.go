// Package metrics holds the Prometheus collectors every part of a backlogd
// process reports to, and builds the registry served on -metrics-addr.
package metrics

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

var (
	// RPC counts and latencies by service, method and code, for every gRPC
	// server in the process.
	RPC = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}),
	))

	// StoreCommitSeconds is the time from a write's queueing to its durable commit.
	StoreCommitSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "backlog_store_commit_seconds",
		Help:    "Time from a store write being queued to its durable commit (group commit included).",
		Buckets: []float64{.0001, .00025, .0005, .001, .002, .004, .008, .016, .032, .064, .128, .256, .512},
	}, []string{"store"})

	// StoreBatchSize is how many writes each commit carried.
	StoreBatchSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "backlog_store_commit_batch_size",
		Help:    "Writes grouped into one bbolt transaction and fsync.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	}, []string{"store"})

	// Exchanges counts automation-secret exchanges by outcome.
	Exchanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "backlog_exchanges_total",
		Help: "Automation secret exchanges by outcome (issued, unauthenticated, forbidden, invalid).",
	}, []string{"outcome"})

	// RateLimited counts requests refused by a rate limiter or lockout.
	RateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "backlog_rate_limited_total",
		Help: "Requests refused by a rate limit or a credential lockout, by limiter.",
	}, []string{"limiter"})

	// VaultEgress counts HTTP Request steps by result.
	VaultEgress = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "backlog_vault_egress_total",
		Help: "HTTP Request steps run by the vault, by result (sent, refused, failed).",
	}, []string{"result"})

	// VaultEventDeliveries counts attempts to deliver events to
	// subscriptions by result.
	VaultEventDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "backlog_vault_event_deliveries_total",
		Help: "Event delivery attempts by result (delivered, retry, failed: gave up).",
	}, []string{"result"})

	// VaultReminders counts secret expiry reminders raised, by threshold.
	VaultReminders = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "backlog_vault_expiry_reminders_total",
		Help: "Secret expiry reminders raised (each once per secret and threshold), by threshold (30d, 7d, 1d, expired).",
	}, []string{"threshold"})
)

// NewRegistry returns a registry with every backlog collector plus the Go
// runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		RPC, StoreCommitSeconds, StoreBatchSize, Exchanges, RateLimited, VaultEgress,
		VaultEventDeliveries, VaultReminders,
	)
	return reg
}
