package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/zalando/go-keyring"
)

// Where a profile's credentials live (Profile.CredentialStore and
// $BACKLOG_CREDENTIAL_STORE).
const (
	storeFile    = "file"
	storeKeyring = "keyring"
)

// keyringService is the service name of the CLI's keyring items.
const keyringService = "backlog-cli"

// Keyring is the OS keyring: macOS Keychain, Windows Credential Manager, or
// a freedesktop Secret Service (GNOME Keyring, KWallet) on Linux.
type Keyring interface {
	Get(service, user string) (string, error)
	Set(service, user, secret string) error
	Delete(service, user string) error
}

// errKeyringItemNotFound is what a Keyring returns for a missing item.
var errKeyringItemNotFound = keyring.ErrNotFound

// osKeyring is the system keyring, through github.com/zalando/go-keyring.
type osKeyring struct{}

func (osKeyring) Get(service, user string) (string, error) { return keyring.Get(service, user) }
func (osKeyring) Set(service, user, secret string) error   { return keyring.Set(service, user, secret) }
func (osKeyring) Delete(service, user string) error        { return keyring.Delete(service, user) }

// storedCredentials is what a profile keeps in the keyring: one item per
// profile, JSON.
type storedCredentials struct {
	Secret         string `json:"secret,omitempty"`
	AccessToken    string `json:"accessToken,omitempty"`
	PersonalToken  string `json:"personalToken,omitempty"`
	AgentKey       string `json:"agentKey,omitempty"`
	OperatorToken  string `json:"operatorToken,omitempty"`
	RotationSecret string `json:"rotationSecret,omitempty"`
}

func credentialsOf(p *Profile) storedCredentials {
	return storedCredentials{
		Secret: p.Secret, AccessToken: p.AccessToken, PersonalToken: p.PersonalToken,
		AgentKey: p.AgentKey, OperatorToken: p.OperatorToken, RotationSecret: p.RotationSecret,
	}
}

func (c storedCredentials) apply(p *Profile) {
	p.Secret, p.AccessToken, p.PersonalToken = c.Secret, c.AccessToken, c.PersonalToken
	p.AgentKey, p.OperatorToken, p.RotationSecret = c.AgentKey, c.OperatorToken, c.RotationSecret
}

func (c storedCredentials) empty() bool { return c == storedCredentials{} }

// keyringUser names profile name's keyring item: the config directory and
// the profile, so that two config directories never share an item.
func (s Store) keyringUser(name string) string {
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		dir = s.Dir
	}
	return dir + string(filepath.Separator) + name
}

func (s Store) keyringUnavailable(why error) error {
	return fmt.Errorf("the OS keyring is not available (%v): credentials stay in the profile file (mode 0600) unless BACKLOG_CREDENTIAL_STORE=keyring finds a keyring", why)
}

// loadFromKeyring fills p's credentials from its keyring item.
func (s Store) loadFromKeyring(name string, p *Profile) error {
	if s.Keyring == nil {
		return fmt.Errorf("profile %s keeps its credentials in the OS keyring, and this system has none", name)
	}
	v, err := s.Keyring.Get(keyringService, s.keyringUser(name))
	if errors.Is(err, errKeyringItemNotFound) {
		return nil // the item was removed: a profile without credentials
	}
	if err != nil {
		return fmt.Errorf("read the credentials of profile %s from the OS keyring: %v", name, err)
	}
	var c storedCredentials
	if err := json.Unmarshal([]byte(v), &c); err != nil {
		// Never quote the item: it holds credentials.
		return fmt.Errorf("the OS keyring item of profile %s is not valid JSON", name)
	}
	c.apply(p)
	return nil
}

// placeCredentials puts p's credentials where the profile keeps them and
// returns what goes in its file: p itself, or p without its credentials
// when they went to the keyring. p is not changed.
func (s Store) placeCredentials(name string, p *Profile) (*Profile, error) {
	mode := s.Mode
	if mode == "" {
		mode = p.CredentialStore
	}
	out := *p
	creds := credentialsOf(p)
	if mode != storeKeyring {
		out.CredentialStore = ""
		if p.CredentialStore == storeKeyring && s.Keyring != nil {
			// Moved back to the file: the keyring item goes.
			if err := s.Keyring.Delete(keyringService, s.keyringUser(name)); err != nil && !errors.Is(err, errKeyringItemNotFound) {
				return nil, fmt.Errorf("remove the credentials of profile %s from the OS keyring: %v", name, err)
			}
		}
		return &out, nil
	}
	if s.Keyring == nil {
		return nil, s.keyringUnavailable(errors.New("no keyring on this system"))
	}
	if creds.empty() {
		if err := s.Keyring.Delete(keyringService, s.keyringUser(name)); err != nil && !errors.Is(err, errKeyringItemNotFound) {
			return nil, s.keyringUnavailable(err)
		}
	} else {
		b, err := json.Marshal(creds)
		if err != nil {
			return nil, err
		}
		if err := s.Keyring.Set(keyringService, s.keyringUser(name), string(b)); err != nil {
			return nil, s.keyringUnavailable(err)
		}
	}
	storedCredentials{}.apply(&out)
	out.CredentialStore = storeKeyring
	return &out, nil
}

// deleteKeyringItem removes profile name's keyring item, if it has one.
func (s Store) deleteKeyringItem(name string) error {
	if s.Keyring == nil {
		return nil
	}
	err := s.Keyring.Delete(keyringService, s.keyringUser(name))
	if err != nil && !errors.Is(err, errKeyringItemNotFound) {
		return fmt.Errorf("remove the credentials of profile %s from the OS keyring: %v", name, err)
	}
	return nil
}
