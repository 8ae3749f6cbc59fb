package vault

// Events: what happens to a workspace's secrets (and, published by the
// sibling services, to its automations, agents and credentials), recorded
// in the transaction of the change, then
//
//   - fanned out to the workspace's event subscriptions: HTTPS endpoints
//     that receive signed POSTs (Backlog-Signature: t=<unix>,v1=<hex
//     HMAC-SHA256 of "<t>.<body>">), retried with backoff, each attempt in
//     a delivery log;
//   - streamed to internal services following WatchEvents.
//
// Expiry reminders are events too: at 30, 7 and 1 days before a secret's
// expiry and at expiry, each once per secret, expiry and threshold.
//
// Every replica of the vault runs the same loops on the shared store and
// takes turns through it: an event is fanned out in the transaction that
// deletes its pending mark (so once), a delivery attempt is made only by
// the replica whose claim (a put-if-absent with an expiry) succeeded, and
// a reminder is raised only by the transaction whose put-if-absent of its
// mark succeeded. Delivery is at least once: a replica that dies between
// sending and recording leaves a claim that expires, and the next attempt
// sends the same event id again.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	vaultstorev1 "github.com/backlog/controlplane/gen/go/backlog/vaultstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/store"
)

type (
	subscriptionRecord = vaultstorev1.SubscriptionRecord
	deliveryRecord     = vaultstorev1.DeliveryRecord
)

// Event types.
const (
	EventSecretCreated           = "secret.created"
	EventSecretUpdated           = "secret.updated"
	EventSecretRevoked           = "secret.revoked"
	EventSecretDeleted           = "secret.deleted"
	EventSecretExpiring          = "secret.expiring"
	EventSecretExpired           = "secret.expired"
	EventAutomationSecretRotated = "automation.secret_rotated"
	EventAgentKeyRotated         = "agent.key_rotated"
	EventCredentialRevoked       = "credential.revoked"
)

// EventTypes lists every event type.
var EventTypes = []string{
	EventSecretCreated, EventSecretUpdated, EventSecretRevoked, EventSecretDeleted, EventSecretExpiring, EventSecretExpired,
	EventAutomationSecretRotated, EventAgentKeyRotated, EventCredentialRevoked,
}

// publishable are the types sibling services publish.
var publishable = []string{EventAutomationSecretRotated, EventAgentKeyRotated, EventCredentialRevoked}

// SignatureHeader carries a delivery's signature.
const SignatureHeader = "Backlog-Signature"

// Defaults of the event loops.
const (
	DefaultEventPoll        = time.Second
	DefaultReminderInterval = 30 * time.Second
	DefaultDeliveryBackoff  = 5 * time.Second
	DefaultDeliveryAttempts = 8
	maxDeliveryBackoff      = time.Hour
	eventRetention          = 7 * 24 * time.Hour
	deliveryRetention       = 30 * 24 * time.Hour
	claimTTL                = time.Minute
	maxSubscriptions        = 20
	maxEventData            = 20
	maxDeliveryResponse     = 4 << 10
	fanOutBatch             = 50
	deliveryBatch           = 20
	deliveryWorkers         = 8
)

// Reminder thresholds, largest first: a secret gets the reminder of the
// smallest threshold it is within, once.
var reminderThresholds = []struct {
	label string
	d     time.Duration
}{{"30d", 30 * 24 * time.Hour}, {"7d", 7 * 24 * time.Hour}, {"1d", 24 * time.Hour}}

// Audit actions.
const (
	actionSubscriptionCreate = "event_subscription.create"
	actionSubscriptionDelete = "event_subscription.delete"
	actionEventPublish       = "event.publish"
)

// Errors.
var (
	ErrNoSubscription = errors.New("event subscription not found")
)

const subscriptionPrefix = "evsub"

// ---- keys ----

func eventKey(id string) []byte { return []byte(id) }

func subscriptionKey(ws, id string) []byte { return store.Key(ws, id) }

func deliveryKey(ws, sub, evt string) []byte { return store.Key(ws, sub, evt) }

// dueKey orders pending deliveries by when they are due.
func dueKey(at time.Time, ws, sub, evt string) []byte {
	return store.Key(fmt.Sprintf("%016x", at.UnixNano()), ws, sub, evt)
}

func reminderKey(rec *secretRecord, label string) []byte {
	return store.Key(rec.GetWorkspaceId(), nameKey(rec.GetName()), strconv.FormatInt(rec.GetExpiresAt().GetSeconds(), 10), label)
}

// signingAADName binds a subscription's sealed signing secret to it; no
// secret name can take this form (names never hold '/').
func signingAADName(id string) string { return "/subscription/" + id }

// ---- recording events ----

// newEvent builds an event of ws at now.
func newEvent(ws, typ string, now time.Time, data map[string]string) *vaultv1.Event {
	return &vaultv1.Event{Id: ids.New("evt"), Type: typ, WorkspaceId: ws, OccurredAt: timestamppb.New(now), Data: data}
}

// putEvent records ev in tx: kept for followers for eventRetention, and
// marked pending for fan-out.
func putEvent(tx store.WriteTx, ev *vaultv1.Event) error {
	if err := store.Put(tx, eventsBucket, eventKey(ev.GetId()), ev, store.ExpiresAt(ev.GetOccurredAt().AsTime().Add(eventRetention))); err != nil {
		return err
	}
	return tx.Put(eventsPendingBucket, eventKey(ev.GetId()), []byte{})
}

// secretEvent records a secret event in tx.
func (s *Service) secretEvent(tx store.WriteTx, typ string, rec *secretRecord, now time.Time, extra ...string) error {
	data := map[string]string{"name": rec.GetName(), "kind": rec.GetKind()}
	for i := 0; i+1 < len(extra); i += 2 {
		data[extra[i]] = extra[i+1]
	}
	return putEvent(tx, newEvent(rec.GetWorkspaceId(), typ, now, data))
}

// ---- the loops ----

// eventLoops runs the fan-out, delivery and reminder loops until ctx ends.
type eventLoops struct {
	poll, reminders time.Duration
	backoff         time.Duration
	attempts        int
	wg              sync.WaitGroup
	cancel          context.CancelFunc
}

func (s *Service) startEventLoops(cfg Config) {
	l := &eventLoops{poll: cfg.EventPoll, reminders: cfg.ReminderInterval, backoff: cfg.DeliveryBackoff, attempts: cfg.DeliveryAttempts}
	if l.poll <= 0 {
		l.poll = DefaultEventPoll
	}
	if l.reminders <= 0 {
		l.reminders = DefaultReminderInterval
	}
	if l.backoff <= 0 {
		l.backoff = DefaultDeliveryBackoff
	}
	if l.attempts <= 0 {
		l.attempts = DefaultDeliveryAttempts
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	s.loops = l
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		s.every(ctx, l.poll, func(ctx context.Context) {
			s.fanOut(ctx)
			s.deliverDue(ctx)
		})
	}()
	go func() {
		defer l.wg.Done()
		s.every(ctx, l.reminders, s.remind)
	}()
}

func (s *Service) stopEventLoops() {
	if s.loops != nil {
		s.loops.cancel()
		s.loops.wg.Wait()
	}
}

// every runs fn at once and then every d until ctx ends.
func (s *Service) every(ctx context.Context, d time.Duration, fn func(context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fanOut turns pending events into one delivery per matching subscription.
func (s *Service) fanOut(ctx context.Context) {
	var pending [][]byte
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		pending = pending[:0]
		_, err := tx.Scan(eventsPendingBucket, store.ScanOptions{Limit: fanOutBatch}, func(k, _ []byte) (bool, error) {
			pending = append(pending, bytes.Clone(k))
			return true, nil
		})
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			s.lg.Warn("event fan-out: could not read pending events", zap.Error(err))
		}
		return
	}
	for _, k := range pending {
		err := s.db.Update(ctx, func(tx store.WriteTx) error {
			if v, err := tx.Get(eventsPendingBucket, k); err != nil || v == nil {
				return err // another replica fanned it out
			}
			if err := tx.Delete(eventsPendingBucket, k); err != nil {
				return err
			}
			ev := &vaultv1.Event{}
			if ok, err := store.Get(tx, eventsBucket, k, ev); err != nil || !ok {
				return err // expired unsent: nothing to do
			}
			body, err := deliveryBody(ev)
			if err != nil {
				return err
			}
			now := time.Now() // deliveries are timed by the wall clock
			_, err = tx.Scan(subscriptionsBucket, store.ScanOptions{Prefix: workspacePrefix(ev.GetWorkspaceId())}, func(_, v []byte) (bool, error) {
				sub := &subscriptionRecord{}
				if err := proto.Unmarshal(v, sub); err != nil {
					return false, err
				}
				if !subscribed(sub.GetEvents(), ev.GetType()) {
					return false, nil
				}
				d := &deliveryRecord{
					EventId: ev.GetId(), EventType: ev.GetType(), Status: "pending", CreatedAt: timestamppb.New(now),
					NextAttemptAt: timestamppb.New(now), Body: body, SubscriptionId: sub.GetId(), WorkspaceId: ev.GetWorkspaceId(),
				}
				if err := store.Put(tx, deliveriesBucket, deliveryKey(d.WorkspaceId, d.SubscriptionId, d.EventId), d); err != nil {
					return false, err
				}
				return true, tx.Put(eventsDueBucket, dueKey(now, d.WorkspaceId, d.SubscriptionId, d.EventId), []byte{})
			})
			return err
		})
		if err != nil && ctx.Err() == nil {
			s.lg.Warn("event fan-out failed; retrying", zap.String("event-id", string(k)), zap.Error(err))
		}
	}
}

func subscribed(types []string, typ string) bool {
	return slices.Contains(types, "*") || slices.Contains(types, typ)
}

// deliveryBody is the JSON a delivery sends: id, type, workspaceId,
// occurredAt, data.
func deliveryBody(ev *vaultv1.Event) ([]byte, error) {
	data := ev.GetData()
	if data == nil {
		data = map[string]string{}
	}
	return json.Marshal(struct {
		ID          string            `json:"id"`
		Type        string            `json:"type"`
		WorkspaceID string            `json:"workspaceId"`
		OccurredAt  string            `json:"occurredAt"`
		Data        map[string]string `json:"data"`
	}{ev.GetId(), ev.GetType(), ev.GetWorkspaceId(), ev.GetOccurredAt().AsTime().UTC().Format(time.RFC3339Nano), data})
}

// Sign returns the Backlog-Signature header value of body at t, keyed by
// a subscription's signing secret.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// deliverDue attempts the deliveries that are due, each claimed first so
// that one replica sends it.
func (s *Service) deliverDue(ctx context.Context) {
	now := time.Now()
	limit := []byte(fmt.Sprintf("%016x", now.UnixNano()))
	var due [][]byte
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		due = due[:0]
		_, err := tx.Scan(eventsDueBucket, store.ScanOptions{Limit: deliveryBatch}, func(k, _ []byte) (bool, error) {
			if bytes.Compare(k[:min(len(k), len(limit))], limit) > 0 {
				return false, errStopScan
			}
			due = append(due, bytes.Clone(k))
			return true, nil
		})
		if errors.Is(err, errStopScan) {
			err = nil
		}
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			s.lg.Warn("event delivery: could not read due deliveries", zap.Error(err))
		}
		return
	}
	// Attempts run side by side, so that one slow endpoint does not hold
	// up the others' deliveries.
	var wg sync.WaitGroup
	sem := make(chan struct{}, deliveryWorkers)
	for _, k := range due {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.attempt(ctx, k)
		})
	}
	wg.Wait()
}

var errStopScan = errors.New("stop scan")

// attempt makes one delivery attempt of the due entry k, if this replica
// wins its claim.
func (s *Service) attempt(ctx context.Context, due []byte) {
	parts := strings.SplitN(string(due), "/", 4)
	if len(parts) != 4 {
		s.lg.Error("malformed due delivery key; dropped", zap.ByteString("key", due))
		_ = s.db.Update(ctx, func(tx store.WriteTx) error { return tx.Delete(eventsDueBucket, due) })
		return
	}
	ws, subID, evtID := parts[1], parts[2], parts[3]
	dkey := deliveryKey(ws, subID, evtID)
	tok := []byte(ids.New("claim"))
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		v, err := tx.Get(eventClaimsBucket, dkey)
		if err != nil {
			return err
		}
		if bytes.Equal(v, tok) {
			return nil // an earlier run of this function took it
		}
		return tx.Put(eventClaimsBucket, dkey, tok, store.IfAbsent(), store.ExpiresAt(time.Now().Add(claimTTL)))
	})
	if errors.Is(err, store.ErrExists) {
		return // another replica is sending it
	}
	if err != nil {
		if ctx.Err() == nil {
			s.lg.Warn("event delivery: could not claim", zap.Error(err))
		}
		return
	}
	release := func(tx store.WriteTx) error {
		if v, err := tx.Get(eventClaimsBucket, dkey); err != nil || !bytes.Equal(v, tok) {
			return err
		}
		return tx.Delete(eventClaimsBucket, dkey)
	}
	// Read what to send (and check it is still due: another replica may
	// have sent it between our scan and our claim).
	var d *deliveryRecord
	var sub *subscriptionRecord
	var secret []byte
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		clear(secret)
		d, sub, secret = nil, nil, nil
		if v, err := tx.Get(eventsDueBucket, due); err != nil || v == nil {
			return err
		}
		d = &deliveryRecord{}
		if ok, err := store.Get(tx, deliveriesBucket, dkey, d); err != nil || !ok {
			d = nil
			return err
		}
		sub = &subscriptionRecord{}
		if ok, err := store.Get(tx, subscriptionsBucket, subscriptionKey(ws, subID), sub); err != nil || !ok {
			sub = nil
			return err
		}
		secret, err = s.openSigningSecret(tx, sub)
		return err
	})
	defer clear(secret)
	if err != nil || d == nil || d.GetStatus() != "pending" || sub == nil {
		_ = s.db.Update(context.WithoutCancel(ctx), func(tx store.WriteTx) error {
			if err == nil { // delivered, dropped, or its subscription deleted
				if d != nil && sub == nil && d.GetStatus() == "pending" {
					d.Status, d.LastError = "failed", "subscription deleted"
					if err := store.Put(tx, deliveriesBucket, dkey, d, store.ExpiresAt(time.Now().Add(deliveryRetention))); err != nil {
						return err
					}
				}
				if err := tx.Delete(eventsDueBucket, due); err != nil {
					return err
				}
			}
			return release(tx)
		})
		if err != nil && ctx.Err() == nil {
			s.lg.Warn("event delivery: could not read the delivery", zap.String("event-id", evtID), zap.Error(err))
		}
		return
	}

	code, sendErr := s.post(ctx, sub.GetUrl(), string(secret), d)
	now := time.Now()
	d.Attempts++
	d.LastStatusCode = int32(code)
	d.LastError = ""
	result := "delivered"
	switch {
	case sendErr == nil && code >= 200 && code < 300:
		d.Status, d.DeliveredAt, d.NextAttemptAt = "delivered", timestamppb.New(now), nil
	default:
		if sendErr != nil {
			d.LastError = sendErr.Error()
		} else {
			d.LastError = fmt.Sprintf("answered HTTP %d", code)
		}
		if int(d.Attempts) >= s.loops.attempts {
			d.Status, d.NextAttemptAt, result = "failed", nil, "failed"
		} else {
			wait := min(s.loops.backoff<<(d.Attempts-1), maxDeliveryBackoff)
			d.NextAttemptAt, result = timestamppb.New(now.Add(wait)), "retry"
		}
	}
	metrics.VaultEventDeliveries.WithLabelValues(result).Inc()
	err = s.db.Update(context.WithoutCancel(ctx), func(tx store.WriteTx) error {
		var opts []store.PutOption
		if d.Status != "pending" {
			opts = append(opts, store.ExpiresAt(time.Now().Add(deliveryRetention)))
		}
		if err := store.Put(tx, deliveriesBucket, dkey, d, opts...); err != nil {
			return err
		}
		if err := tx.Delete(eventsDueBucket, due); err != nil {
			return err
		}
		if d.Status == "pending" {
			if err := tx.Put(eventsDueBucket, dueKey(d.GetNextAttemptAt().AsTime(), ws, subID, evtID), []byte{}); err != nil {
				return err
			}
		}
		return release(tx)
	})
	if err != nil {
		s.lg.Warn("event delivery: could not record the attempt; it will be made again", zap.String("event-id", evtID), zap.Error(err))
		return
	}
	s.lg.Info("event delivery attempt", zap.String("workspace-id", ws), zap.String("subscription-id", subID), zap.String("event-id", evtID),
		zap.String("type", d.GetEventType()), zap.String("result", result), zap.Int32("status", d.LastStatusCode), zap.Int32("attempt", d.Attempts))
}

// post sends one delivery, signed now, through the egress client (so the
// SSRF guard applies at dial time too).
func (s *Service) post(ctx context.Context, target, secret string, d *deliveryRecord) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, target, bytes.NewReader(d.GetBody()))
	if err != nil {
		return 0, errors.New("the request could not be built")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Backlog-Event-Id", d.GetEventId())
	req.Header.Set("Backlog-Event-Type", d.GetEventType())
	req.Header.Set(SignatureHeader, Sign(secret, time.Now(), d.GetBody()))
	resp, err := s.egress.Do(req)
	if err != nil {
		if dn, ok := isEgressDenied(err); ok {
			return 0, errors.New(dn.Error())
		}
		if rctx.Err() != nil || isTimeout(err) {
			return 0, fmt.Errorf("no answer within %s", s.timeout)
		}
		return 0, errors.New("the request failed (connection or TLS)")
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDeliveryResponse))
	return resp.StatusCode, nil
}

// remind raises the expiry reminders that are due, each once.
func (s *Service) remind(ctx context.Context) {
	var after []byte
	for ctx.Err() == nil {
		var due []*secretRecord
		next, err := s.viewPage(ctx, secretsBucket, after, 100, func(v []byte) error {
			rec, err := decodeSecret(v)
			if err != nil {
				return err
			}
			if rec.GetExpiresAt() != nil && rec.GetState() != StateRevoked {
				due = append(due, rec)
			}
			return nil
		})
		if err != nil {
			if ctx.Err() == nil {
				s.lg.Warn("expiry reminders: could not read secrets", zap.Error(err))
			}
			return
		}
		now := s.now()
		for _, rec := range due {
			label, typ := reminderFor(rec, now)
			if label == "" {
				continue
			}
			s.raiseReminder(ctx, rec, label, typ, now)
		}
		if next == nil {
			return
		}
		after = next
	}
}

// reminderFor says which reminder a secret is due at now: the smallest
// threshold it is within, or expired; "" when none.
func reminderFor(rec *secretRecord, now time.Time) (label, typ string) {
	left := rec.GetExpiresAt().AsTime().Sub(now)
	if left <= 0 {
		return "expired", EventSecretExpired
	}
	for i := len(reminderThresholds) - 1; i >= 0; i-- {
		if left <= reminderThresholds[i].d {
			return reminderThresholds[i].label, EventSecretExpiring
		}
	}
	return "", ""
}

func (s *Service) raiseReminder(ctx context.Context, seen *secretRecord, label, typ string, now time.Time) {
	key := reminderKey(seen, label)
	raised := false
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		raised = false
		rec, err := getSecret(tx, seen.GetWorkspaceId(), seen.GetName())
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !proto.Equal(rec.GetExpiresAt(), seen.GetExpiresAt()) || rec.GetState() == StateRevoked {
			return nil // changed since: the next pass judges it again
		}
		if v, err := tx.Get(remindersBucket, key); err != nil || v != nil {
			return err // raised before (by this replica or another)
		}
		err = tx.Put(remindersBucket, key, []byte{}, store.IfAbsent(), store.ExpiresAt(rec.GetExpiresAt().AsTime().Add(deliveryRetention)))
		if errors.Is(err, store.ErrExists) {
			return nil // raised before (by this replica or another)
		}
		if err != nil {
			return err
		}
		extra := []string{"expiresAt", rec.GetExpiresAt().AsTime().UTC().Format(time.RFC3339)}
		if typ == EventSecretExpiring {
			extra = append(extra, "threshold", label)
		}
		if err := s.secretEvent(tx, typ, rec, now, extra...); err != nil {
			return err
		}
		raised = true
		return audit.Put(tx, s.rec.Event(ctx, rec.GetWorkspaceId(), "secret.reminder", "secret", rec.GetName(), audit.Success, typ+" threshold="+label))
	})
	if errors.Is(err, store.ErrExists) {
		return // another replica raised it first (an engine may say so at commit)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.lg.Warn("expiry reminder failed; retrying on the next pass", zap.String("secret", seen.GetName()), zap.Error(err))
		}
		return
	}
	if raised {
		metrics.VaultReminders.WithLabelValues(label).Inc()
		s.lg.Info("secret expiry reminder", zap.String("workspace-id", seen.GetWorkspaceId()), zap.String("secret", seen.GetName()), zap.String("threshold", label))
	}
}

// viewPage visits up to limit values of bucket after the cursor after.
func (s *Service) viewPage(ctx context.Context, b store.Bucket, after []byte, limit int, fn func(v []byte) error) ([]byte, error) {
	var next []byte
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		next, err = tx.Scan(b, store.ScanOptions{After: after, Limit: limit}, func(_, v []byte) (bool, error) {
			return true, fn(v)
		})
		return err
	})
	return next, err
}

// ---- subscriptions API ----

func presentSubscription(r *subscriptionRecord) *vaultv1.EventSubscription {
	return &vaultv1.EventSubscription{
		WorkspaceId: r.GetWorkspaceId(), Id: r.GetId(), Url: r.GetUrl(), Events: slices.Clone(r.GetEvents()),
		CreatedAt: proto.CloneOf(r.GetCreatedAt()), CreatedBy: r.GetCreatedBy(),
	}
}

func (s *Service) openSigningSecret(tx store.ReadTx, sub *subscriptionRecord) ([]byte, error) {
	blob := sub.GetSealedSigningSecret()
	ver, err := sealedBy(blob)
	if err != nil {
		return nil, fail(ErrUnreadable, "the signing secret of subscription %s is unreadable", sub.GetId())
	}
	dk, err := s.dataKeyFor(tx, sub.GetWorkspaceId(), ver)
	if err != nil {
		return nil, err
	}
	v, err := openValue(dk, sub.GetWorkspaceId(), signingAADName(sub.GetId()), 1, blob)
	if err != nil {
		return nil, fail(ErrUnreadable, "the signing secret of subscription %s could not be decrypted", sub.GetId())
	}
	return v, nil
}

// validSubscriptionURL checks an endpoint: https, a host the egress guard
// allows (names are resolved now, and again at every dial).
func (s *Service) validSubscriptionURL(ctx context.Context, raw string) (string, error) {
	const field = "url"
	if raw == "" {
		return "", errs.Invalid(field, "is required: the https:// endpoint to deliver events to")
	}
	if len(raw) > maxURLLen {
		return "", errs.Invalid(field, "must be at most %d characters", maxURLLen)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		return "", errs.Invalid(field, "is not an absolute URL")
	}
	if strings.ToLower(u.Scheme) != "https" {
		return "", errs.Invalid(field, "must be an https:// URL: deliveries are signed, not secret, but are only sent over TLS")
	}
	if u.User != nil {
		return "", errs.Invalid(field, "must not carry user:password@")
	}
	u.Scheme, u.Fragment, u.RawFragment = "https", "", ""
	guard := !s.allowPrivate
	if err := checkHost(u, guard); err != nil {
		if d, ok := isEgressDenied(err); ok {
			return "", errs.Invalid(field, "%s: %s; subscriptions may only reach public addresses (an operator can allow private ones with -vault-egress-allow-private)", u.Host, d.Error())
		}
		return "", err
	}
	if guard {
		if _, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err != nil {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", u.Hostname())
			if err != nil {
				return "", errs.Invalid(field, "host %q could not be resolved", clip(u.Hostname()))
			}
			for _, a := range addrs {
				if class := deniedClass(a.Unmap()); class != "" {
					return "", errs.Invalid(field, "%s resolves to a %s address; subscriptions may only reach public addresses", clip(u.Hostname()), class)
				}
			}
		}
	}
	return u.String(), nil
}

func validEventTypes(in []string) ([]string, error) {
	const field = "events"
	if len(in) == 0 {
		return nil, errs.Invalid(field, "is required: a list of event types, or [\"*\"] for all")
	}
	var out []string
	for _, t := range in {
		if t != "*" && !slices.Contains(EventTypes, t) {
			return nil, errs.Invalid(field, "%q is not an event type; known types: %s (or \"*\")", clip(t), strings.Join(EventTypes, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	if slices.Contains(out, "*") {
		out = []string{"*"}
	}
	return out, nil
}

// ListEventSubscriptions lists a workspace's subscriptions.
func (s *Service) ListEventSubscriptions(ctx context.Context, req *vaultv1.ListEventSubscriptionsRequest) (*vaultv1.ListEventSubscriptionsResponse, error) {
	ws := req.GetWorkspaceId()
	items, next, err := listRecords[subscriptionRecord](ctx, s, ws, "event-subscriptions", req.GetPageSize(), req.GetPageToken(),
		func() error { _, err := auth.RequireRole(ctx, ws, auth.RoleAdmin); return err }, subscriptionsBucket, presentSubscription)
	if err != nil {
		return nil, err
	}
	return &vaultv1.ListEventSubscriptionsResponse{Subscriptions: items, NextPageToken: next}, nil
}

// CreateEventSubscription subscribes an endpoint; the signing secret is
// returned once and kept sealed (it must sign every delivery).
func (s *Service) CreateEventSubscription(ctx context.Context, req *vaultv1.CreateEventSubscriptionRequest) (*vaultv1.CreateEventSubscriptionResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	types, err := validEventTypes(req.GetEvents())
	if err != nil {
		return nil, err
	}
	r, err := idem.FromContext(ctx, ws+"|CreateEventSubscription", req)
	if err != nil {
		return nil, err
	}
	p, err := auth.RequireRole(ctx, ws, auth.RoleAdmin)
	if err != nil {
		return nil, err
	}
	target, err := s.validSubscriptionURL(ctx, req.GetUrl())
	if err != nil {
		return nil, err
	}
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	secret := credfmt.New(credfmt.WebhookSigning)
	rec := &subscriptionRecord{
		WorkspaceId: ws, Id: ids.New(subscriptionPrefix), Url: target, Events: types,
		CreatedAt: timestamppb.New(s.now()), CreatedBy: p.GetSubjectId(),
	}
	resp := &vaultv1.CreateEventSubscriptionResponse{Subscription: presentSubscription(rec), SigningSecret: secret}
	var replay *vaultv1.CreateEventSubscriptionResponse
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		replay = nil
		if r != nil {
			// A retry with the same Idempotency-Key and body gets the first
			// response again; the store decides between concurrent ones.
			prev := &vaultv1.CreateEventSubscriptionResponse{}
			if found, err := idem.Lookup(tx, replaysBucket, r, prev); err != nil {
				return err
			} else if found {
				replay = prev
				return audit.Put(tx, s.rec.Event(ctx, ws, actionSubscriptionCreate+"_replay", "event_subscription", prev.GetSubscription().GetId(), audit.Success,
					"the first response returned again for a retry with the same Idempotency-Key; no signing secret issued"))
			}
			if err := idem.Save(tx, replaysBucket, r, resp, s.now()); err != nil {
				return err
			}
		}
		n := 0
		if _, err := tx.Scan(subscriptionsBucket, store.ScanOptions{Prefix: workspacePrefix(ws)}, func(_, _ []byte) (bool, error) { n++; return true, nil }); err != nil {
			return err
		}
		if n >= maxSubscriptions {
			return errs.WithReason(codes.FailedPrecondition, Domain, "TOO_MANY_SUBSCRIPTIONS",
				fmt.Sprintf("this workspace already has %d event subscriptions, the most allowed; delete one first", maxSubscriptions))
		}
		dk, err := s.dataKeyForWrite(tx, ws)
		if err != nil {
			return err
		}
		sealed, err := sealValue(dk, ws, signingAADName(rec.Id), 1, []byte(secret))
		if err != nil {
			return err
		}
		rec.SealedSigningSecret = sealed
		if err := store.Put(tx, subscriptionsBucket, subscriptionKey(ws, rec.Id), rec); err != nil {
			return err
		}
		u, _ := url.Parse(target)
		return audit.Put(tx, s.rec.Event(ctx, ws, actionSubscriptionCreate, "event_subscription", rec.Id, audit.Success,
			fmt.Sprintf("host=%s events=%s", u.Host, strings.Join(types, ","))))
	})
	if errors.Is(err, store.ErrExists) && r != nil {
		// A concurrent request with the same key won at commit: its
		// response is the answer.
		prev := &vaultv1.CreateEventSubscriptionResponse{}
		var found bool
		err = s.db.View(ctx, func(tx store.ReadTx) (err error) {
			found, err = idem.Lookup(tx, replaysBucket, r, prev)
			return err
		})
		if err == nil && found {
			return prev, nil
		}
		if err == nil {
			err = store.ErrUnavailable
		}
	}
	if err != nil {
		return nil, err
	}
	if replay != nil {
		return replay, nil
	}
	return resp, nil
}

func (s *Service) subscriptionReq(ctx context.Context, ws, id string) error {
	if err := validWorkspace(ws); err != nil {
		return err
	}
	if _, err := auth.RequireRole(ctx, ws, auth.RoleAdmin); err != nil {
		return err
	}
	if !ids.Valid(subscriptionPrefix, id) {
		return fail(ErrNoSubscription, "event subscription %q not found in this workspace", clip(id))
	}
	return nil
}

func getSubscription(tx store.ReadTx, ws, id string) (*subscriptionRecord, error) {
	r := &subscriptionRecord{}
	ok, err := store.Get(tx, subscriptionsBucket, subscriptionKey(ws, id), r)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fail(ErrNoSubscription, "event subscription %q not found in this workspace", clip(id))
	}
	return r, nil
}

// GetEventSubscription reads a subscription.
func (s *Service) GetEventSubscription(ctx context.Context, req *vaultv1.GetEventSubscriptionRequest) (*vaultv1.GetEventSubscriptionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetSubscriptionId()
	if err := s.subscriptionReq(ctx, ws, id); err != nil {
		return nil, err
	}
	var r *subscriptionRecord
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		r, err = getSubscription(tx, ws, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.GetEventSubscriptionResponse{Subscription: presentSubscription(r)}, nil
}

// DeleteEventSubscription stops deliveries to a subscription; pending ones
// are dropped (their log says so).
func (s *Service) DeleteEventSubscription(ctx context.Context, req *vaultv1.DeleteEventSubscriptionRequest) (*vaultv1.DeleteEventSubscriptionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetSubscriptionId()
	if err := s.subscriptionReq(ctx, ws, id); err != nil {
		return nil, err
	}
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		if _, err := getSubscription(tx, ws, id); err != nil {
			return err
		}
		if err := tx.Delete(subscriptionsBucket, subscriptionKey(ws, id)); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionSubscriptionDelete, "event_subscription", id, audit.Success, "deleted"))
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.DeleteEventSubscriptionResponse{}, nil
}

// ListEventDeliveries lists a subscription's deliveries, newest first.
func (s *Service) ListEventDeliveries(ctx context.Context, req *vaultv1.ListEventDeliveriesRequest) (*vaultv1.ListEventDeliveriesResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetSubscriptionId()
	if err := s.subscriptionReq(ctx, ws, id); err != nil {
		return nil, err
	}
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	scope := ws + "|" + id + "|deliveries"
	after, err := page.Decode(ctx, scope, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	prefix := store.Key(ws, id, "")
	if len(after) > 0 && !bytes.HasPrefix(after, prefix) {
		return nil, errs.Invalid("pageToken", "does not belong to this subscription")
	}
	resp := &vaultv1.ListEventDeliveriesResponse{}
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		if _, err := getSubscription(tx, ws, id); err != nil {
			return err
		}
		resp.Deliveries = nil
		next, err := tx.Scan(deliveriesBucket, store.ScanOptions{Prefix: prefix, After: after, Limit: size, Reverse: true}, func(_, v []byte) (bool, error) {
			d := &deliveryRecord{}
			if err := proto.Unmarshal(v, d); err != nil {
				return false, err
			}
			resp.Deliveries = append(resp.Deliveries, &vaultv1.EventDelivery{
				EventId: d.GetEventId(), EventType: d.GetEventType(), Status: d.GetStatus(), Attempts: d.GetAttempts(),
				LastStatusCode: d.GetLastStatusCode(), LastError: d.GetLastError(), CreatedAt: d.GetCreatedAt(),
				NextAttemptAt: d.GetNextAttemptAt(), DeliveredAt: d.GetDeliveredAt(),
			})
			return true, nil
		})
		resp.NextPageToken = page.Encode(ctx, scope, next)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ---- internal API ----

// PublishEvent records a sibling service's event.
func (s *Service) PublishEvent(ctx context.Context, req *vaultv1.PublishEventRequest) (*vaultv1.PublishEventResponse, error) {
	if err := s.checkServiceToken(ctx); err != nil {
		return nil, err
	}
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if !slices.Contains(publishable, req.GetType()) {
		return nil, errs.Invalid("type", "%q cannot be published: want one of %s", clip(req.GetType()), strings.Join(publishable, ", "))
	}
	caller, err := validCaller(req.GetCaller())
	if err != nil {
		return nil, err
	}
	if len(req.GetData()) > maxEventData {
		return nil, errs.Invalid("data", "at most %d entries", maxEventData)
	}
	for k, v := range req.GetData() {
		if checkSlug(k, 64) != nil || len(v) > 256 || !utf8.ValidString(v) || !validHeaderText(v) {
			return nil, errs.Invalid("data", "entry %q: keys are 1 to 64 letters, digits, '_', '-' or '.'; values at most 256 bytes of text", clip(k))
		}
		if credfmt.KindOf(v) != "" {
			return nil, errs.Invalid("data", "entry %q holds a credential: events carry names and ids only", clip(k))
		}
	}
	ev := newEvent(ws, req.GetType(), s.now(), req.GetData())
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := putEvent(tx, ev); err != nil {
			return err
		}
		a := s.rec.Event(ctx, ws, actionEventPublish, "event", ev.GetId(), audit.Success, "type="+ev.GetType())
		a.ActorKind, a.ActorId = actorService, caller
		return audit.Put(tx, a)
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.PublishEventResponse{Event: ev}, nil
}

// WatchEvents streams events as they are recorded (by any replica: it
// follows the shared store).
func (s *Service) WatchEvents(req *vaultv1.WatchEventsRequest, stream grpc.ServerStreamingServer[vaultv1.WatchEventsResponse]) error {
	ctx := stream.Context()
	if err := s.checkServiceToken(ctx); err != nil {
		return err
	}
	ws := req.GetWorkspaceId()
	var rev int64
	if err := s.db.View(ctx, func(tx store.ReadTx) error { rev = tx.Revision(); return nil }); err != nil {
		return err
	}
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		ch := s.db.Watch(ctx, rev)
		for wr := range ch {
			if wr.Err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if errors.Is(wr.Err, store.ErrCompacted) {
					break // re-watch from now: followers refresh anyway
				}
				return wr.Err
			}
			rev = wr.Revision
			for _, c := range wr.Changes {
				if c.Bucket != string(eventsBucket) || c.Delete {
					continue
				}
				ev := &vaultv1.Event{}
				if err := proto.Unmarshal(c.Value, ev); err != nil {
					continue
				}
				if ws != "" && ev.GetWorkspaceId() != ws {
					continue
				}
				if err := stream.Send(&vaultv1.WatchEventsResponse{Event: ev}); err != nil {
					return err
				}
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.db.View(ctx, func(tx store.ReadTx) error { rev = tx.Revision(); return nil }); err != nil {
			return err
		}
	}
}
