package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

// Profile is what the CLI keeps about one identity: the credentials it holds
// and which one resource commands send.
type Profile struct {
	// URL is the REST API base URL for this profile (optional; --url and
	// $BACKLOG_URL win over it).
	URL string `json:"url,omitempty"`
	// Use names the credential resource commands send: access, secret,
	// personal, agent or operator.
	Use string `json:"use,omitempty"`
	// WorkspaceID is the default workspace of resource commands, learned from
	// an exchange, a whoami or a workspace creation.
	WorkspaceID string `json:"workspaceId,omitempty"`

	// Secret is an automation secret (blg_auto_…), only ever sent to
	// POST /v1/auth/exchange.
	Secret string `json:"secret,omitempty"`
	// AccessToken is a short-lived access token (blg_at_…) and what is known
	// about it.
	AccessToken          string     `json:"accessToken,omitempty"`
	AccessTokenExpiresAt *time.Time `json:"accessTokenExpiresAt,omitempty"`
	AutomationID         string     `json:"automationId,omitempty"`
	Scopes               []string   `json:"scopes,omitempty"`
	TeamIDs              []string   `json:"teamIds,omitempty"`
	// PersonalToken is a member's personal access token (blg_pat_…).
	PersonalToken string `json:"personalToken,omitempty"`
	// AgentKey is a visible agent's API key (blg_agk_…).
	AgentKey string `json:"agentKey,omitempty"`
	// OperatorToken is the operator token (blg_op_…): creates workspaces.
	OperatorToken string `json:"operatorToken,omitempty"`
	// RotationSecret is a visible agent's rotation secret (blg_rot_…):
	// never a bearer credential, only ever sent in the body of
	// POST /v1/agents/self/rotate-key with AgentKey.
	RotationSecret string `json:"rotationSecret,omitempty"`
	// PendingRotation is the Idempotency-Key of a self-rotation of AgentKey
	// whose answer was not saved yet (the reply was lost, or the CLI was
	// stopped): the next `agents self rotate-key` retries with it and gets
	// the same new pair.
	PendingRotation string `json:"pendingRotation,omitempty"`

	// CredentialStore is where the credentials above are kept: "" (this
	// file) or "keyring" (the OS keyring; the file then holds none).
	CredentialStore string `json:"credentialStore,omitempty"`
}

// Values of Profile.Use.
const (
	UseAccess   = "access"
	UseSecret   = "secret"
	UsePersonal = "personal"
	UseAgent    = "agent"
	UseOperator = "operator"
)

// slot ties a credential kind to where a profile keeps it.
type slot struct {
	use  string
	kind credfmt.Kind
	noun string
	get  func(*Profile) *string
}

var slots = []slot{
	{UseAccess, credfmt.AccessToken, "access token", func(p *Profile) *string { return &p.AccessToken }},
	{UseSecret, credfmt.Automation, "automation secret", func(p *Profile) *string { return &p.Secret }},
	{UsePersonal, credfmt.Personal, "personal access token", func(p *Profile) *string { return &p.PersonalToken }},
	{UseAgent, credfmt.AgentKey, "agent API key", func(p *Profile) *string { return &p.AgentKey }},
	{UseOperator, credfmt.Operator, "operator token", func(p *Profile) *string { return &p.OperatorToken }},
}

func slotByUse(use string) (slot, bool) {
	for _, s := range slots {
		if s.use == use {
			return s, true
		}
	}
	return slot{}, false
}

func slotByKind(k credfmt.Kind) (slot, bool) {
	for _, s := range slots {
		if s.kind == k {
			return s, true
		}
	}
	return slot{}, false
}

// kindNoun names a credential kind for people: "automation secret (blg_auto_…)".
func kindNoun(k credfmt.Kind) string {
	if s, ok := slotByKind(k); ok {
		return s.noun + " (blg_" + string(k) + "_…)"
	}
	if k == credfmt.RotationSecret {
		return "agent rotation secret (blg_rot_…)"
	}
	return "blg_" + string(k) + "_… credential"
}

// article is "a" or "an" for noun.
func article(noun string) string {
	switch noun[0] {
	case 'a', 'e', 'i', 'o', 'u':
		return "an " + noun
	}
	return "a " + noun
}

var profileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func validProfileName(name string) error {
	if !profileNameRE.MatchString(name) {
		return fmt.Errorf("invalid profile name %q: use letters, digits, '.', '_' and '-' (at most 64)", name)
	}
	return nil
}

// Store keeps profiles as one JSON file each in Dir (mode 0700), files
// 0600, written atomically. A profile's credentials are in its file, or,
// when the profile chose it, in the OS keyring (see keyring.go).
type Store struct {
	Dir string
	// Keyring is the OS keyring, nil where there is none.
	Keyring Keyring
	// Mode is where Save puts credentials: "" keeps each profile's choice,
	// "file" or "keyring" ($BACKLOG_CREDENTIAL_STORE) moves them there.
	Mode string
}

// Path is the file of profile name.
func (s Store) Path(name string) string { return filepath.Join(s.Dir, name+".json") }

// Load reads profile name; a profile that was never saved is empty. A file
// that others can read is made private again.
func (s Store) Load(name string) (*Profile, error) {
	path := s.Path(name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Profile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", name, err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("make profile %s private: %w", name, err)
		}
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		// The message of a syntax error never quotes the input.
		return nil, fmt.Errorf("profile file %s is not valid JSON: %v", path, err)
	}
	if p.CredentialStore == storeKeyring {
		if err := s.loadFromKeyring(name, &p); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// Save writes profile name atomically: a temp file (0600) in the same
// directory, synced, then renamed over the old one.
func (s Store) Save(name string, p *Profile) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	if err := os.Chmod(s.Dir, 0o700); err != nil {
		return fmt.Errorf("make config directory private: %w", err)
	}
	onDisk, err := s.placeCredentials(name, p)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(onDisk, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(s.Dir, "."+name+".json.tmp-*")
	if err != nil {
		return fmt.Errorf("save profile %s: %w", name, err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("save profile %s: %w", name, err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("save profile %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("save profile %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save profile %s: %w", name, err)
	}
	if err := os.Rename(tmpName, s.Path(name)); err != nil {
		return fmt.Errorf("save profile %s: %w", name, err)
	}
	ok = true
	// The rename keeps the temp file's 0600; chmod anyway in case a
	// filesystem or umask got in the way.
	if err := os.Chmod(s.Path(name), 0o600); err != nil {
		return fmt.Errorf("make profile %s private: %w", name, err)
	}
	return nil
}

func (a *app) store() (Store, error) {
	mode := a.env.Getenv("BACKLOG_CREDENTIAL_STORE")
	switch mode {
	case "", storeFile, storeKeyring:
	default:
		return Store{}, usageErrorf("BACKLOG_CREDENTIAL_STORE=%q: use file (the default) or keyring", mode)
	}
	st := Store{Keyring: a.env.Keyring, Mode: mode}
	if d := a.env.Getenv("BACKLOG_CONFIG_DIR"); d != "" {
		st.Dir = d
		return st, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return Store{}, fmt.Errorf("no config directory (set BACKLOG_CONFIG_DIR): %w", err)
	}
	st.Dir = filepath.Join(d, "backlog")
	return st, nil
}

func (a *app) loadProfile() (*Profile, error) {
	s, err := a.store()
	if err != nil {
		return nil, err
	}
	return s.Load(a.profileName)
}

func (a *app) saveProfile(p *Profile) error {
	s, err := a.store()
	if err != nil {
		return err
	}
	return s.Save(a.profileName, p)
}

// effectiveUse is p.Use, or for a profile that never chose, the most
// sensible credential it holds.
func effectiveUse(p *Profile) string {
	if p.Use != "" {
		return p.Use
	}
	switch {
	case p.AccessToken != "" || p.Secret != "":
		return UseAccess
	case p.PersonalToken != "":
		return UsePersonal
	case p.AgentKey != "":
		return UseAgent
	case p.OperatorToken != "":
		return UseOperator
	}
	return ""
}

// activeFile names the file that holds the name of the active profile (the
// one `profiles use` chose). It is not a profile: those end in ".json".
const activeFile = "active-profile"

// List returns the names of the saved profiles, sorted.
func (s Store) List() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || filepath.Ext(n) != ".json" {
			continue
		}
		n = n[:len(n)-len(".json")]
		if validProfileName(n) == nil {
			names = append(names, n)
		}
	}
	return names, nil // ReadDir sorts by name
}

// Exists reports whether profile name was saved.
func (s Store) Exists(name string) bool {
	_, err := os.Stat(s.Path(name))
	return err == nil
}

// Delete removes profile name: its file and its keyring item.
func (s Store) Delete(name string) error {
	p, err := s.readFile(name)
	if err != nil {
		return err
	}
	if p.CredentialStore == storeKeyring {
		if err := s.deleteKeyringItem(name); err != nil {
			return err
		}
	}
	if err := os.Remove(s.Path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete profile %s: %w", name, err)
	}
	if act, _ := s.Active(); act == name {
		if err := os.Remove(filepath.Join(s.Dir, activeFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forget the active profile: %w", err)
		}
	}
	return nil
}

// readFile reads profile name's file only (not its keyring item).
func (s Store) readFile(name string) (*Profile, error) {
	b, err := os.ReadFile(s.Path(name))
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", name, err)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("profile file %s is not valid JSON: %v", s.Path(name), err)
	}
	return &p, nil
}

// Active is the profile `profiles use` chose, or "default".
func (s Store) Active() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, activeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "default", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the active profile: %w", err)
	}
	name := strings.TrimSpace(string(b))
	if err := validProfileName(name); err != nil {
		return "", fmt.Errorf("%s: %v", filepath.Join(s.Dir, activeFile), err)
	}
	return name, nil
}

// SetActive makes profile name the one commands use without --profile.
func (s Store) SetActive(name string) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, "."+activeFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("save the active profile: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(name + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("save the active profile: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save the active profile: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.Dir, activeFile)); err != nil {
		return fmt.Errorf("save the active profile: %w", err)
	}
	return nil
}

// activeProfile is the profile of commands run without --profile and
// $BACKLOG_PROFILE.
func (a *app) activeProfile() (string, error) {
	s, err := a.store()
	if err != nil {
		return "", err
	}
	return s.Active()
}
