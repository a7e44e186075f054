// palo-webhooks web UI: Settings → Developers → Webhooks (spec "Créer un webhook",
// "Gestion des livraisons"). Plain script, no framework, no build step; served by the daemon.
//
// Rules kept throughout:
// - Every page is built with createElement and textContent: text from a receiver (response
//   bodies) or a producer (payloads) is never parsed as HTML.
// - The token lives in sessionStorage and goes out only as `Authorization: Bearer`; nothing
//   is sent with ambient credentials, so other sites cannot act for the person (no CSRF).
// - The CSP forbids inline scripts and styles: colours and sizes live in app.css; the chart
//   is SVG built with DOM calls, styled by class.
"use strict";

(() => {
  const TOKEN_KEY = "palo-webhooks.token";
  const WHO_KEY = "palo-webhooks.who";
  const LANG_KEY = "palo-webhooks.lang";
  const LIVE_REFRESH_MS = 5000;
  const PAGE_SIZE = 25;
  const STATUSES = ["pending", "retrying", "succeeded", "failed", "cancelled"];

  // ---------------------------------------------------------------- i18n
  const MESSAGES = {
    en: {
      settings: "Settings", developers: "Developers", webhooks: "Webhooks",
      newWebhook: "New webhook", deliveries: "Deliveries", overview: "Overview",
      delivery: "Delivery", signIn: "Sign in", signOut: "Sign out",
      signInTitle: "Sign in to the webhooks console",
      signInHelp: "Paste an organization API key (you see that organization's webhooks) or the admin token (every organization). It is kept in this tab only and sent to this daemon only.",
      tokenLabel: "API key or admin token", tokenRequired: "Paste a key or token.",
      tokenRejected: "This key or token was not accepted.", signedInAdmin: "Admin (all organizations)",
      signedInOrg: "Organization {org}", language: "Language",
      url: "URL", events: "Events", active: "Active", inactive: "Inactive", description: "Description",
      lastDelivery: "Last delivery", successRate: "Success (24 h)", organization: "Organization",
      none: "none", noWebhooks: "No webhooks yet.", createFirst: "Create a webhook",
      allEvents: "All event types (*)", secret: "Secret", generateSecret: "Generate a secret (recommended)",
      ownSecret: "Use my own secret (at least 32 characters)", create: "Create webhook", save: "Save changes",
      saved: "Saved.", cancel: "Cancel", created: "Webhook created.",
      secretOnce: "Copy this secret now. It will not be shown again: store it where your receiver reads it, and use it to verify X-Palo-Signature.",
      swSecret: "Same secret for Standard Webhooks libraries", copy: "Copy", copied: "Copied",
      goToWebhook: "Open the webhook", fixErrors: "Some fields need attention.",
      eventsRequired: "Choose at least one event type.", orgRequired: "Name the organization.",
      edit: "Edit", activate: "Activate", deactivate: "Deactivate", delete: "Delete",
      deleteTitle: "Delete this webhook?",
      deleteText: "Its unfinished deliveries are cancelled, and it leaves this console with its deliveries list (each delivery stays readable from a link to it). This cannot be undone.",
      deleteConfirm: "Delete webhook", deleted: "Webhook deleted.",
      sendTest: "Send test event", testSent: "Test event sent", last24h: "Last 24 hours",
      perHour: "Deliveries per hour, by outcome", latency: "Attempt latency (ms)",
      p50: "p50", p95: "p95", noData: "No deliveries in the last 24 hours.",
      truncated: "Only the newest {n} deliveries are counted.",
      status: "Status", eventType: "Event type", eventId: "Event id", attempts: "Attempts",
      nextAttempt: "Next attempt", lastResult: "Last attempt", createdM: "Created", colon: ": ", signedOut: "You are signed out.", lastActivity: "Last activity",
      scheduledLong: "automatic (retry schedule)", manualLong: "manual (redelivery or test)",
      againHint: "Already delivered: redelivering sends it again, with the same event_id.",
      urlInvalid: "Enter an absolute URL, for example https://example.com/webhooks/palo.",
      urlScheme: "The URL must start with https:// (http:// only if the operator allows it).",
      urlBlocked: "This URL points to an internal address that deliveries may not reach.",
      urlCredentials: "The URL must not contain a user name or password.",
      secretShort: "The secret must be at least 32 characters long.",
      refused: "Refused: {msg}", createdAt: "Created", allStatuses: "All statuses", allTypes: "All event types",
      newer: "Newer", older: "Older", newest: "Newest", live: "Live: refreshes every 5 s", updated: "updated {time}",
      noDeliveries: "No deliveries match.", noOlder: "No older deliveries.", badToken: "A key or token holds only printable ASCII characters.", view: "View",
      redeliver: "Redeliver", redelivering: "Sending…", attemptN: "Attempt {n}",
      payload: "Payload", attemptsLog: "Attempts", number: "#", time: "Time", duration: "Duration",
      result: "Result", trigger: "Trigger", responseBody: "Response body", truncatedBody: "truncated at 64 KiB",
      emptyBody: "(empty)", noAttempts: "No attempt yet.", webhook: "Webhook", scheduled: "scheduled", manual: "manual",
      statusNames: { pending: "pending", retrying: "retrying", succeeded: "succeeded", failed: "failed", cancelled: "cancelled", held: "held" },
      errorNames: { timeout: "timeout", connect: "connection failed", dns: "DNS lookup failed", tls: "TLS failed", io: "connection broken", blocked_address: "blocked address", auth: "receiver credentials failed" },
      notFound: "Not found.", loading: "Loading…", failedLoad: "Could not load: {msg}",
      busy: "The webhook is busy: retry in a few seconds.", unavailable: "The webhook is inactive or deleted: activate it first.", inFlight: "An attempt of this delivery is running: wait for its result.", storeDown: "The daemon cannot write right now (disk full or I/O error): retry later.", rateLimited: "Too many requests: retry in a moment.", deletedWebhook: "deleted webhook",
      retryAfter: "receiver asked to wait {s} s", whenNone: "none scheduled", previous: "Previous page",
      next: "Next page", required: "required", deliveriesOf: "Deliveries of this webhook",
      disabledState: "Disabled by the daemon", disabledTitle: "This webhook is disabled",
      reasonGone: "Its receiver answered 410 Gone: it asked not to be called any more.",
      reasonFailing: "Every attempt to it has failed since {since}.", reasonOther: "Reason: {reason}.",
      disabledSince: "Disabled since", lastError: "Last error", statusCode: "HTTP status",
      heldCount: "Held deliveries", heldHelp: "Events that arrived while it is disabled are kept here, not sent.",
      deliverHeld: "Deliver the held events when enabling (otherwise they are cancelled)",
      enable: "Enable", enabling: "Enabling…", enabledDelivered: "Enabled: the held deliveries are queued, oldest first.",
      enabledDiscarded: "Enabled: the held deliveries were cancelled.",
      payloadDeleted: "The event's payload was deleted: there is nothing left to send.",
      deliveryOptions: "Delivery options", ordering: "Ordering", orderingNone: "None: deliveries go as soon as they are due",
      orderingKey: "By key: one at a time per ordering key, in ingest order",
      orderingHelp: "With ordering by key, a failing event holds its key until it succeeds or fails for good (about 8.6 h with the default retry schedule).",
      orderingHoldMax: "Longest hold of a key (e.g. 30m; empty: until the delivery ends)",
      maxInFlight: "Requests open at once (1-64)", maxInFlightHelp: "Empty: the daemon's default.",
      rateLimit: "Requests per second at most", rateLimitHelp: "Empty: no limit. Waiting deliveries are not failed.",
      filter: "Filter (JSON)", filterHelp: "Only events whose envelope matches, e.g. {\"data.priority\": {\"$in\": [\"p1\", \"p2\"]}}. Operators: $eq $ne $in $exists $gt $gte $lt $lte $and $or.",
      filterJson: "The filter must be JSON.", customHeaders: "Custom headers", headersHelp: "One \"Name: value\" per line.",
      headerLine: "\"{line}\" is not \"Name: value\".", secretHeader: "Secret header name", secretHeaderValue: "Secret header value (write-only)",
      keepsStored: "stored (leave empty to keep)", receiverAuth: "Receiver authentication", authNone: "None",
      authUsername: "Username", authSecret: "Password, token or client secret (write-only)", authSecretNeeded: "Enter the credential.",
      tokenUrl: "Token URL", clientId: "Client id", scope: "Scope", audience: "Audience",
      clientCert: "Client certificate (PEM, mutual TLS)", clientCertHelp: "The certificate chain, then its private key below (write-only).",
      clientKey: "Private key (PEM)", removeCert: "Remove the client certificate",
      certConfigured: "Configured: {subject}, valid until {until}.", proxy: "Proxy", proxyDefault: "The daemon's proxy",
      proxyNone: "No proxy (direct)", proxyUrl: "Proxy URL", ed25519: "Also sign with Ed25519 (Standard Webhooks v1a)",
      publicKey: "Ed25519 public key",
      payloadDeletedAt: "The payload was deleted on {time}; the attempt log stays.",
    },
    fr: {
      settings: "Paramètres", developers: "Développeurs", webhooks: "Webhooks",
      newWebhook: "Nouveau webhook", deliveries: "Livraisons", overview: "Vue d'ensemble",
      delivery: "Livraison", signIn: "Se connecter", signOut: "Se déconnecter",
      signInTitle: "Connexion à la console des webhooks",
      signInHelp: "Collez une clé d'API d'organisation (vous voyez les webhooks de cette organisation) ou le jeton d'administration (toutes les organisations). Elle reste dans cet onglet et n'est envoyée qu'à ce démon.",
      tokenLabel: "Clé d'API ou jeton d'administration", tokenRequired: "Collez une clé ou un jeton.",
      tokenRejected: "Cette clé ou ce jeton n'a pas été accepté.", signedInAdmin: "Administration (toutes les organisations)",
      signedInOrg: "Organisation {org}", language: "Langue",
      url: "URL", events: "Événements", active: "Actif", inactive: "Inactif", description: "Description",
      lastDelivery: "Dernière livraison", successRate: "Réussite (24 h)", organization: "Organisation",
      none: "aucune", noWebhooks: "Aucun webhook pour l'instant.", createFirst: "Créer un webhook",
      allEvents: "Tous les types d'événements (*)", secret: "Secret", generateSecret: "Générer un secret (recommandé)",
      ownSecret: "Utiliser mon propre secret (32 caractères au moins)", create: "Créer le webhook", save: "Enregistrer",
      saved: "Enregistré.", cancel: "Annuler", created: "Webhook créé.",
      secretOnce: "Copiez ce secret maintenant. Il ne sera plus affiché : rangez-le là où votre récepteur le lit, pour vérifier X-Palo-Signature.",
      swSecret: "Le même secret pour les bibliothèques Standard Webhooks", copy: "Copier", copied: "Copié",
      goToWebhook: "Ouvrir le webhook", fixErrors: "Certains champs sont à corriger.",
      eventsRequired: "Choisissez au moins un type d'événement.", orgRequired: "Indiquez l'organisation.",
      edit: "Modifier", activate: "Activer", deactivate: "Désactiver", delete: "Supprimer",
      deleteTitle: "Supprimer ce webhook ?",
      deleteText: "Ses livraisons en cours sont annulées, et il disparaît de cette console avec sa liste de livraisons (chaque livraison reste consultable par un lien direct). Action définitive.",
      deleteConfirm: "Supprimer le webhook", deleted: "Webhook supprimé.",
      sendTest: "Envoyer un événement de test", testSent: "Événement de test envoyé", last24h: "Dernières 24 heures",
      perHour: "Livraisons par heure, par résultat", latency: "Latence des tentatives (ms)",
      p50: "p50", p95: "p95", noData: "Aucune livraison ces dernières 24 heures.",
      truncated: "Seules les {n} livraisons les plus récentes sont comptées.",
      status: "Statut", eventType: "Type d'événement", eventId: "Identifiant d'événement", attempts: "Tentatives",
      nextAttempt: "Prochaine tentative", lastResult: "Dernière tentative", createdM: "Créé", colon: " : ", signedOut: "Vous êtes déconnecté.", lastActivity: "Dernière activité",
      scheduledLong: "automatique (calendrier de nouvelles tentatives)", manualLong: "manuelle (re-déclenchement ou test)",
      againHint: "Déjà livrée : la re-déclencher l'envoie une nouvelle fois, avec le même event_id.",
      urlInvalid: "Saisissez une URL absolue, par exemple https://exemple.com/webhooks/palo.",
      urlScheme: "L'URL doit commencer par https:// (http:// seulement si l'opérateur l'autorise).",
      urlBlocked: "Cette URL désigne une adresse interne que les livraisons ne peuvent pas atteindre.",
      urlCredentials: "L'URL ne doit contenir ni nom d'utilisateur ni mot de passe.",
      secretShort: "Le secret doit compter au moins 32 caractères.",
      refused: "Refusé : {msg}", createdAt: "Créée", allStatuses: "Tous les statuts", allTypes: "Tous les types",
      newer: "Plus récentes", older: "Plus anciennes", newest: "Les plus récentes", live: "En direct : actualisé toutes les 5 s", updated: "mis à jour à {time}",
      noDeliveries: "Aucune livraison ne correspond.", noOlder: "Aucune livraison plus ancienne.", badToken: "Une clé ou un jeton ne contient que des caractères ASCII imprimables.", view: "Voir",
      redeliver: "Re-déclencher", redelivering: "Envoi…", attemptN: "Tentative {n}",
      payload: "Contenu (payload)", attemptsLog: "Tentatives", number: "N°", time: "Heure", duration: "Durée",
      result: "Résultat", trigger: "Origine", responseBody: "Corps de la réponse", truncatedBody: "tronqué à 64 Kio",
      emptyBody: "(vide)", noAttempts: "Aucune tentative pour l'instant.", webhook: "Webhook", scheduled: "planifiée", manual: "manuelle",
      statusNames: { pending: "en attente", retrying: "nouvel essai prévu", succeeded: "réussie", failed: "échouée", cancelled: "annulée", held: "retenue" },
      errorNames: { timeout: "délai dépassé", connect: "connexion impossible", dns: "échec DNS", tls: "échec TLS", io: "connexion interrompue", blocked_address: "adresse bloquée", auth: "identifiants du destinataire refusés" },
      notFound: "Introuvable.", loading: "Chargement…", failedLoad: "Chargement impossible : {msg}",
      busy: "Le webhook est occupé : réessayez dans quelques secondes.", unavailable: "Le webhook est inactif ou supprimé : activez-le d'abord.", inFlight: "Une tentative de cette livraison est en cours : attendez son résultat.", storeDown: "Le démon ne peut pas écrire pour l'instant (disque plein ou erreur d'E/S) : réessayez plus tard.", rateLimited: "Trop de requêtes : réessayez dans un instant.", deletedWebhook: "webhook supprimé",
      retryAfter: "le récepteur demande d'attendre {s} s", whenNone: "aucune prévue", previous: "Page précédente",
      next: "Page suivante", required: "obligatoire", deliveriesOf: "Livraisons de ce webhook",
      disabledState: "Désactivé par le démon", disabledTitle: "Ce webhook est désactivé",
      reasonGone: "Son récepteur a répondu 410 Gone : il a demandé à ne plus être appelé.",
      reasonFailing: "Toutes ses tentatives échouent depuis le {since}.", reasonOther: "Motif : {reason}.",
      disabledSince: "Désactivé depuis", lastError: "Dernière erreur", statusCode: "Statut HTTP",
      heldCount: "Livraisons retenues", heldHelp: "Les événements arrivés pendant la désactivation sont conservés ici, sans être envoyés.",
      deliverHeld: "Livrer les événements retenus à la réactivation (sinon ils sont annulés)",
      enable: "Réactiver", enabling: "Réactivation…", enabledDelivered: "Réactivé : les livraisons retenues partent, les plus anciennes d'abord.",
      enabledDiscarded: "Réactivé : les livraisons retenues ont été annulées.",
      payloadDeleted: "Le contenu de l'événement a été supprimé : il n'y a plus rien à envoyer.",
      deliveryOptions: "Options de livraison", ordering: "Ordre", orderingNone: "Aucun : chaque livraison part dès qu'elle est due",
      orderingKey: "Par clé : une à la fois par clé d'ordre, dans l'ordre de réception",
      orderingHelp: "Avec l'ordre par clé, un événement en échec retient sa clé jusqu'à sa réussite ou son échec définitif (environ 8,6 h avec le calendrier par défaut).",
      orderingHoldMax: "Durée maximale de retenue d'une clé (ex. 30m ; vide : jusqu'à la fin de la livraison)",
      maxInFlight: "Requêtes simultanées (1-64)", maxInFlightHelp: "Vide : la valeur du démon.",
      rateLimit: "Requêtes par seconde au plus", rateLimitHelp: "Vide : sans limite. Les livraisons en attente ne sont pas en échec.",
      filter: "Filtre (JSON)", filterHelp: "Seulement les événements dont l'enveloppe correspond, ex. {\"data.priority\": {\"$in\": [\"p1\", \"p2\"]}}. Opérateurs : $eq $ne $in $exists $gt $gte $lt $lte $and $or.",
      filterJson: "Le filtre doit être du JSON.", customHeaders: "En-têtes personnalisés", headersHelp: "Un « Nom: valeur » par ligne.",
      headerLine: "« {line} » n'est pas « Nom: valeur ».", secretHeader: "Nom de l'en-tête secret", secretHeaderValue: "Valeur de l'en-tête secret (écriture seule)",
      keepsStored: "enregistré (laisser vide pour le garder)", receiverAuth: "Authentification auprès du destinataire", authNone: "Aucune",
      authUsername: "Utilisateur", authSecret: "Mot de passe, jeton ou secret client (écriture seule)", authSecretNeeded: "Saisissez l'identifiant secret.",
      tokenUrl: "URL du jeton", clientId: "Identifiant client", scope: "Portée (scope)", audience: "Audience",
      clientCert: "Certificat client (PEM, TLS mutuel)", clientCertHelp: "La chaîne de certificats, puis sa clé privée ci-dessous (écriture seule).",
      clientKey: "Clé privée (PEM)", removeCert: "Retirer le certificat client",
      certConfigured: "Configuré : {subject}, valable jusqu'au {until}.", proxy: "Proxy", proxyDefault: "Le proxy du démon",
      proxyNone: "Pas de proxy (direct)", proxyUrl: "URL du proxy", ed25519: "Signer aussi avec Ed25519 (Standard Webhooks v1a)",
      publicKey: "Clé publique Ed25519",
      payloadDeletedAt: "Le contenu a été supprimé le {time} ; le journal des tentatives reste.",
    },
  };

  // Issue 15: held deliveries, and recovery and replay jobs.
  STATUSES.push("held");
  Object.assign(MESSAGES.en, {
    jobs: "Recovery jobs", noJobs: "No recovery or replay job yet.", kind: "Kind",
    state: "State", progress: "Progress", matched: "Matched", succeededN: "Succeeded",
    failedN: "Failed", cancelJob: "Cancel", jobLive: "Live: refreshes every 2 s",
    jobKinds: { recover: "recover", replay: "replay" },
    jobStates: { queued: "queued", running: "running", finished: "finished", cancelled: "cancelled" },
    progressOf: "{done} of {queued} ended", jobFinished: "This job has ended already.",
  });
  Object.assign(MESSAGES.fr, {
    jobs: "Reprises", noJobs: "Aucune reprise ni relecture pour l'instant.", kind: "Type",
    state: "État", progress: "Progression", matched: "Correspondantes", succeededN: "Réussies",
    failedN: "Échouées", cancelJob: "Annuler", jobLive: "En direct : actualisé toutes les 2 s",
    jobKinds: { recover: "reprise", replay: "relecture" },
    jobStates: { queued: "en file", running: "en cours", finished: "terminée", cancelled: "annulée" },
    progressOf: "{done} sur {queued} terminées", jobFinished: "Cette reprise est déjà terminée.",
  });
  MESSAGES.en.statusNames.held = "held";
  MESSAGES.fr.statusNames.held = "retenue";

  let lang = pickLanguage();

  function pickLanguage() {
    const chosen = localStorage.getItem(LANG_KEY);
    if (chosen === "fr" || chosen === "en") return chosen;
    // The server set <html lang> from Accept-Language.
    return document.documentElement.lang === "fr" ? "fr" : "en";
  }

  function t(key, vars) {
    let text = MESSAGES[lang][key];
    if (text === undefined) text = MESSAGES.en[key] ?? key;
    if (vars) for (const [k, v] of Object.entries(vars)) text = text.replace(`{${k}}`, String(v));
    return text;
  }
  const num = (n) => Number(n).toLocaleString(lang === "fr" ? "fr-FR" : "en-GB");
  const pct = (rate) => `${num(Math.round(rate * 1000) / 10)} %`;
  const statusName = (s) => MESSAGES[lang].statusNames[s] ?? s;
  const errorName = (e) => MESSAGES[lang].errorNames[e] ?? e;

  // ---------------------------------------------------------------- DOM helpers
  // h("a", {href: "#/x", class: "btn", onclick: fn}, "text", child…): attributes by
  // setAttribute, listeners for on*, children as nodes or text nodes (never HTML).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
  }
  // Bidirectional controls (U+202A-202E, U+2066-2069) in data could make text read
  // backwards; they are shown as their code instead.
  const BIDI = /[\u202a-\u202e\u2066-\u2069]/g;
  const visible = (text) => text.replace(BIDI, (ch) => `<U+${ch.charCodeAt(0).toString(16).toUpperCase()}>`);
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(visible(String(c))));
    }
  }
  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }
  const $ = (id) => document.getElementById(id);

  // Times: shown in the browser's time zone, the UTC value on hover.
  function absTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString(lang === "fr" ? "fr-FR" : "en-GB", {
      year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }
  function relTime(iso) {
    const diff = (new Date(iso).getTime() - Date.now()) / 1000;
    const rtf = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
    const abs = Math.abs(diff);
    if (abs < 60) return rtf.format(Math.round(diff), "second");
    if (abs < 3600) return rtf.format(Math.round(diff / 60), "minute");
    if (abs < 86400) return rtf.format(Math.round(diff / 3600), "hour");
    return rtf.format(Math.round(diff / 86400), "day");
  }
  function timeEl(iso, withRelative) {
    if (!iso) return h("span", { class: "muted" }, "—");
    const utc = new Date(iso).toISOString().replace(".000Z", "Z") + " (UTC)";
    return h("time", { datetime: iso, title: utc },
      withRelative ? `${relTime(iso)} · ${absTime(iso)}` : absTime(iso));
  }
  function badge(status) {
    return h("span", { class: `badge badge-${status}`, "data-status": status }, statusName(status));
  }
  function attemptResult(a) {
    if (a.status_code !== null && a.status_code !== undefined) {
      return `HTTP ${a.status_code}`;
    }
    return a.error ? errorName(a.error) : "—";
  }
  function attemptOk(a) {
    return a.status_code >= 200 && a.status_code < 300 && !a.error;
  }

  // ---------------------------------------------------------------- API client
  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || "";
      this.field = err.field || null;
    }
  }

  // One request to the API with the person's token. Answers the parsed JSON, or with
  // `{ raw: true }` the body text (JSON whose numbers must not go through JSON.parse).
  // A 401 signs the person out; any other failure throws an ApiError.
  async function api(method, path, body, { raw = false } = {}) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = res.status === 204 ? "" : await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (res.status === 401 && path !== "/api/me") {
      signOut(t("tokenRejected"));
      throw new ApiError(res.status, data);
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return raw ? text : data;
  }

  // JSON tokens of `text`: strings, numbers and literals as their exact source text.
  function* jsonTokens(text) {
    let i = 0;
    while (i < text.length) {
      const c = text[i];
      if (" \t\r\n".includes(c)) { i += 1; continue; }
      if ("{}[]:,".includes(c)) { yield { kind: c, text: c }; i += 1; continue; }
      let j = i + 1;
      if (c === '"') {
        while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
        j += 1;
      } else {
        while (j < text.length && !" \t\r\n{}[]:,".includes(text[j])) j += 1;
      }
      yield { kind: "v", text: text.slice(i, j) };
      i = j;
    }
  }

  // The top-level object's members: key → the value's source text, unchanged.
  function topLevelFields(text) {
    const out = {};
    let depth = 0, key = null, expectKey = false, start = -1, parts = [];
    for (const tok of jsonTokens(text)) {
      if (depth === 1 && tok.kind === "v" && expectKey) { key = JSON.parse(tok.text); expectKey = false; continue; }
      if (depth === 1 && tok.kind === ":") { start = 0; parts = []; continue; }
      if (depth === 1 && (tok.kind === "," || tok.kind === "}")) {
        if (key !== null) out[key] = parts.join(" ");
        key = null; expectKey = true; start = -1;
        if (tok.kind === "}") depth -= 1;
        continue;
      }
      if (tok.kind === "{" || tok.kind === "[") depth += 1;
      if (depth === 1 && tok.kind === "{") { expectKey = true; continue; }
      if (tok.kind === "}" || tok.kind === "]") depth -= 1;
      if (start >= 0) parts.push(tok.text);
    }
    return out;
  }

  // Indents JSON text two spaces per level, keeping every value's source text.
  function prettyJson(text) {
    let out = "", depth = 0, pendingEmpty = null;
    const nl = () => "\n" + "  ".repeat(depth);
    for (const tok of jsonTokens(text)) {
      if (pendingEmpty !== null) {
        if ((pendingEmpty === "{" && tok.kind === "}") || (pendingEmpty === "[" && tok.kind === "]")) {
          out += tok.text; depth -= 1; pendingEmpty = null; continue;
        }
        out += nl(); pendingEmpty = null;
      }
      if (tok.kind === "{" || tok.kind === "[") { out += tok.text; depth += 1; pendingEmpty = tok.kind; }
      else if (tok.kind === "}" || tok.kind === "]") { depth -= 1; out += nl() + tok.text; }
      else if (tok.kind === ",") out += "," + nl();
      else if (tok.kind === ":") out += ": ";
      else out += tok.text;
    }
    return out;
  }

  function who() {
    try { return JSON.parse(sessionStorage.getItem(WHO_KEY) || "null"); } catch (_) { return null; }
  }
  function isAdmin() {
    const w = who();
    return !!w && w.principal === "admin";
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(WHO_KEY);
    signOutMessage = message || "";
    if (location.hash !== "#/signin") location.hash = "#/signin";
    else route();
  }
  let signOutMessage = "";

  // Event types, read once per session from the daemon.
  let eventTypesCache = null;
  async function eventTypes() {
    if (!eventTypesCache) {
      const res = await api("GET", "/api/event-types");
      eventTypesCache = res.data.filter((e) => e.subscribable !== false).map((e) => e.name);
    }
    return eventTypesCache;
  }

  // ---------------------------------------------------------------- chrome
  // Each navigation starts a new generation; a page still loading for an older one renders
  // nothing and schedules nothing (its answers arrive after the person left it).
  let generation = 0;
  const current = (gen) => gen === generation;
  let timers = [];
  function later(fn, ms, gen) {
    if (!current(gen)) return;
    const id = setTimeout(() => { timers = timers.filter((t) => t !== id); if (current(gen)) fn(); }, ms);
    timers.push(id);
  }
  function stopTimers() {
    for (const id of timers) clearTimeout(id);
    timers = [];
  }

  function crumbs(items) {
    const nav = $("crumbs");
    clear(nav);
    nav.setAttribute("aria-label", lang === "fr" ? "Fil d'Ariane" : "Breadcrumb");
    const ol = h("ol");
    items.forEach((item, i) => {
      const last = i === items.length - 1;
      ol.append(h("li", {},
        item.href && !last ? h("a", { href: item.href }, item.label)
          : h("span", last ? { "aria-current": "page" } : {}, item.label)));
    });
    nav.append(ol);
  }
  const baseCrumbs = () => [
    { label: t("settings") }, { label: t("developers") }, { label: t("webhooks"), href: "#/webhooks" },
  ];

  function account() {
    const box = $("account");
    clear(box);
    const select = h("select", { id: "lang", "aria-label": t("language") },
      h("option", { value: "fr", selected: lang === "fr" }, "Français"),
      h("option", { value: "en", selected: lang === "en" }, "English"));
    select.addEventListener("change", () => {
      lang = select.value;
      localStorage.setItem(LANG_KEY, lang);
      document.documentElement.lang = lang;
      route();
    });
    box.append(select);
    const w = who();
    if (w) {
      box.append(h("span", { class: "who", id: "who" },
        w.principal === "admin" ? t("signedInAdmin") : t("signedInOrg", { org: w.organization_id })));
      box.append(h("button", { type: "button", id: "sign-out", class: "btn btn-quiet", onclick: () => signOut(t("signedOut")) }, t("signOut")));
    }
  }

  function page(title, ...content) {
    const main = $("main");
    clear(main);
    // Element.append turns null into the text "null": only nodes and text go in.
    main.append(h("h1", {}, title), ...content.filter((c) => c !== null && c !== undefined && c !== false));
    document.title = `${title} · palo-webhooks`;
  }
  function notice(kind, text) {
    return h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  }
  // An API error in the person's language when its code is known.
  function errorText(err) {
    const known = { not_found: "notFound", webhook_busy: "busy", webhook_unavailable: "unavailable",
      attempt_in_flight: "inFlight", store_unavailable: "storeDown", rate_limited: "rateLimited",
      payload_deleted: "payloadDeleted" };
    return known[err.code] ? t(known[err.code]) : err.message;
  }
  function failed(err) {
    if (err.status === 404) return notice("error", t("notFound"));
    return notice("error", t("failedLoad", { msg: errorText(err) }));
  }
  function tableWrap(table) {
    return h("div", { class: "table-wrap" }, table);
  }

  // ---------------------------------------------------------------- sign in
  function signInPage() {
    crumbs([{ label: t("signIn") }]);
    const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
    const error = h("p", { class: "field-error", id: "token-error", role: "alert" });
    const info = h("p", { class: "notice notice-info", id: "signed-out", role: "status" }, signOutMessage);
    if (signOutMessage !== t("signedOut")) { info.hidden = true; if (signOutMessage) error.textContent = signOutMessage; }
    const form = h("form", { class: "card narrow", id: "sign-in-form", novalidate: true },
      info, h("p", {}, t("signInHelp")),
      h("label", { for: "token" }, t("tokenLabel")),
      input, error,
      h("button", { type: "submit", class: "btn btn-primary", id: "sign-in" }, t("signIn")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) { error.textContent = t("tokenRequired"); input.focus(); return; }
      if (!/^[\x21-\x7e]+$/.test(token)) { error.textContent = t("badToken"); input.select(); return; }
      sessionStorage.setItem(TOKEN_KEY, token);
      try {
        const me = await api("GET", "/api/me");
        sessionStorage.setItem(WHO_KEY, JSON.stringify(me));
        signOutMessage = "";
        // Back to the page asked for (a shared link), or the list.
        if (location.hash.startsWith("#/") && location.hash !== "#/signin") route();
        else location.hash = "#/webhooks";
      } catch (err) {
        sessionStorage.removeItem(TOKEN_KEY);
        error.textContent = err.status === 401 ? t("tokenRejected") : err.message;
        input.select();
      }
    });
    page(t("signInTitle"), form);
    input.focus();
  }

  // ---------------------------------------------------------------- webhooks list
  async function webhooksPage(params, gen) {
    crumbs(baseCrumbs());
    const cursor = params.get("cursor");
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) q.set("cursor", cursor);
    page(t("webhooks"), h("p", {}, t("loading")));
    let res;
    try { res = await api("GET", `/api/webhooks?${q}`); } catch (err) { if (current(gen)) page(t("webhooks"), failed(err)); return; }
    if (!current(gen)) return;
    const toolbar = h("div", { class: "toolbar" },
      h("a", { href: "#/webhooks/new", class: "btn btn-primary", id: "new-webhook" }, t("newWebhook")),
      h("a", { href: "#/jobs", class: "btn", id: "jobs-link" }, t("jobs")));
    if (res.data.length === 0 && !cursor) {
      page(t("webhooks"), toolbar, notice("info", t("noWebhooks")));
      return;
    }
    const admin = isAdmin();
    const tbody = h("tbody");
    for (const w of res.data) {
      const last = h("td", { "data-col": "last", "data-label": t("lastDelivery") }, "…");
      const rate = h("td", { "data-col": "rate", class: "num", "data-label": t("successRate") }, "…");
      tbody.append(h("tr", { "data-webhook": w.id },
        h("td", { class: "url", "data-label": t("url") }, h("a", { href: `#/webhooks/${encodeURIComponent(w.id)}` }, w.url)),
        admin ? h("td", { "data-label": t("organization") }, w.organization_id) : null,
        h("td", { "data-label": t("events") }, w.events.join(", ")),
        h("td", { "data-label": t("active") },
          w.disabled ? h("span", { class: "badge badge-failed", "data-disabled": w.disabled.reason }, t("disabledState"))
            : w.active ? t("active") : h("span", { class: "muted" }, t("inactive"))),
        h("td", { class: "desc", "data-label": t("description") }, w.description || ""),
        last, rate));
      fillStats(w.id, last, rate);
    }
    const table = h("table", { id: "webhooks" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, t("url")),
        admin ? h("th", { scope: "col" }, t("organization")) : null,
        h("th", { scope: "col" }, t("events")),
        h("th", { scope: "col" }, t("active")),
        h("th", { scope: "col" }, t("description")),
        h("th", { scope: "col" }, t("lastDelivery")),
        h("th", { scope: "col", class: "num" }, t("successRate")))),
      tbody);
    const pager = h("div", { class: "pager" });
    if (cursor) pager.append(h("a", { href: "#/webhooks", class: "btn" }, t("newest")));
    if (res.next_cursor) pager.append(h("a", { href: `#/webhooks?cursor=${encodeURIComponent(res.next_cursor)}`, class: "btn" }, t("next")));
    page(t("webhooks"), toolbar, tableWrap(table), pager);
  }

  async function fillStats(id, lastCell, rateCell) {
    try {
      const st = await api("GET", `/api/webhooks/${encodeURIComponent(id)}/stats?hours=24`);
      clear(lastCell);
      clear(rateCell);
      if (st.last_delivery) {
        lastCell.append(
          h("a", { href: `#/deliveries/${encodeURIComponent(st.last_delivery.id)}`, class: "badge-link", title: t("view") }, badge(st.last_delivery.status)),
          " ", timeEl(st.last_delivery.updated_at, true));
      } else {
        lastCell.append(h("span", { class: "muted" }, t("none")));
      }
      const judged = st.totals.succeeded + st.totals.failed + st.totals.retrying;
      rateCell.append(st.success_rate === null ? "—" : `${pct(st.success_rate)} (${st.totals.succeeded}/${judged})`);
    } catch (_) {
      lastCell.textContent = "?";
      rateCell.textContent = "?";
    }
  }

  // ---------------------------------------------------------------- delivery options
  // The delivery options of a webhook (issue 16) as a folded section of its form. Credentials
  // are write-only: the fields start empty, and an empty credential on an edit keeps the
  // stored one. collect() returns { body, problems }: only the fields that change.
  function optionsSection(existing, field) {
    const o = existing || {};
    const input = (id, attrs) => h("input", Object.assign({ id, name: id.replace(/^f-/, "") }, attrs));
    const select = (id, values, chosen) => {
      const el = h("select", { id, name: id.replace(/^f-/, "") });
      for (const [value, label] of values) el.append(h("option", { value, selected: value === chosen }, label));
      return el;
    };
    const ordering = select("f-ordering", [["none", t("orderingNone")], ["key", t("orderingKey")]], o.ordering || "none");
    const holdMax = input("f-ordering_hold_max", { placeholder: "30m", value: o.ordering_hold_max || "" });
    const maxInFlight = input("f-max_in_flight", { type: "number", min: "1", max: "64", value: o.max_in_flight ?? "" });
    const rate = input("f-rate_limit", { type: "number", min: "1", value: o.rate_limit ?? "" });
    const filter = h("textarea", { id: "f-filter", name: "filter", rows: "3", spellcheck: "false", placeholder: '{"data.priority": {"$in": ["p1", "p2"]}}' });
    filter.value = o.filter ? JSON.stringify(o.filter) : "";
    const publicHeaders = (o.headers || []).filter((x) => !x.secret).map((x) => `${x.name}: ${x.value}`).join("\n");
    const headers = h("textarea", { id: "f-headers", name: "headers", rows: "3", spellcheck: "false", placeholder: "X-Tenant: acme" });
    headers.value = publicHeaders;
    const secretNames = (o.headers || []).filter((x) => x.secret).map((x) => x.name);
    const secretName = input("f-secret_header_name", { placeholder: "X-Api-Key", value: secretNames[0] || "" });
    const secretValue = input("f-secret_header_value", { type: "password", autocomplete: "off", placeholder: secretNames.length ? t("keepsStored") : "" });
    const authKind = select("f-auth", [["none", t("authNone")], ["basic", "Basic"], ["bearer", "Bearer"], ["oauth2_client_credentials", "OAuth 2.0 (client credentials)"]], o.auth ? o.auth.type : "none");
    const username = input("f-auth_username", { value: (o.auth && o.auth.username) || "", autocomplete: "off" });
    const credential = input("f-auth_secret", { type: "password", autocomplete: "new-password", placeholder: o.auth ? t("keepsStored") : "" });
    const tokenUrl = input("f-token_url", { type: "url", value: (o.auth && o.auth.token_url) || "", placeholder: "https://auth.example.com/oauth/token" });
    const clientId = input("f-client_id", { value: (o.auth && o.auth.client_id) || "" });
    const scope = input("f-scope", { value: (o.auth && o.auth.scope) || "" });
    const audience = input("f-audience", { value: (o.auth && o.auth.audience) || "" });
    const authFields = h("div", { class: "subfields" },
      field("auth_username", t("authUsername"), username), field("auth_secret", t("authSecret"), credential),
      field("token_url", t("tokenUrl"), tokenUrl), field("client_id", t("clientId"), clientId),
      field("scope", t("scope"), scope), field("audience", t("audience"), audience));
    const showAuth = () => {
      const k = authKind.value;
      for (const [el, on] of [[username, k === "basic"], [credential, k !== "none"], [tokenUrl, k === "oauth2_client_credentials"],
        [clientId, k === "oauth2_client_credentials"], [scope, k === "oauth2_client_credentials"], [audience, k === "oauth2_client_credentials"]]) {
        el.closest(".field").hidden = !on;
      }
    };
    authKind.addEventListener("change", showAuth);
    const cert = h("textarea", { id: "f-client_certificate", name: "client_certificate", rows: "3", spellcheck: "false", placeholder: "-----BEGIN CERTIFICATE-----" });
    const key = h("textarea", { id: "f-client_key", name: "client_key", rows: "3", spellcheck: "false", placeholder: o.client_certificate ? t("keepsStored") : "-----BEGIN PRIVATE KEY-----" });
    const removeCert = input("f-remove_certificate", { type: "checkbox" });
    const certNote = o.client_certificate
      ? h("p", { class: "help", id: "certificate-configured" }, t("certConfigured", { subject: o.client_certificate.subject, until: o.client_certificate.not_after }))
      : null;
    const proxyMode = select("f-proxy", [["default", t("proxyDefault")], ["none", t("proxyNone")], ["url", t("proxyUrl")]],
      o.proxy === null || o.proxy === undefined ? "default" : o.proxy === "none" ? "none" : "url");
    const proxyUrl = input("f-proxy_url", { placeholder: "http://proxy.internal:3128", value: o.proxy && o.proxy !== "none" ? o.proxy : "" });
    const ed25519 = input("f-ed25519", { type: "checkbox", checked: (o.signature_scheme || []).includes("ed25519") });
    const el = h("details", { class: "field options", id: "f-options" }, h("summary", {}, t("deliveryOptions")),
      field("ordering", t("ordering"), ordering, t("orderingHelp")),
      field("ordering_hold_max", t("orderingHoldMax"), holdMax),
      field("max_in_flight", t("maxInFlight"), maxInFlight, t("maxInFlightHelp")),
      field("rate_limit", t("rateLimit"), rate, t("rateLimitHelp")),
      field("filter", t("filter"), filter, t("filterHelp")),
      field("headers", t("customHeaders"), headers, t("headersHelp")),
      h("div", { class: "subfields" }, field("secret_header_name", t("secretHeader"), secretName), field("secret_header_value", t("secretHeaderValue"), secretValue)),
      field("auth", t("receiverAuth"), authKind), authFields,
      field("client_certificate", t("clientCert"), cert, t("clientCertHelp")), field("client_key", t("clientKey"), key), certNote,
      h("label", { class: "check" }, removeCert, " ", t("removeCert")),
      field("proxy", t("proxy"), proxyMode), field("proxy_url", t("proxyUrl"), proxyUrl),
      h("label", { class: "check" }, ed25519, " ", t("ed25519")));
    showAuth();

    function collect() {
      const body = {};
      const problems = [];
      const set = (k, v) => { if (JSON.stringify(v) !== JSON.stringify(o[k] ?? null)) body[k] = v; };
      set("ordering", ordering.value);
      set("ordering_hold_max", holdMax.value.trim() || null);
      set("max_in_flight", maxInFlight.value ? Number(maxInFlight.value) : null);
      set("rate_limit", rate.value ? Number(rate.value) : null);
      if (filter.value.trim()) {
        try { set("filter", JSON.parse(filter.value)); } catch (_) { problems.push(["filter", t("filterJson")]); }
      } else set("filter", null);
      const list = [];
      for (const line of headers.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
        const at = line.indexOf(":");
        if (at < 1) { problems.push(["headers", t("headerLine", { line })]); continue; }
        list.push({ name: line.slice(0, at).trim(), value: line.slice(at + 1).trim(), secret: false });
      }
      if (secretName.value.trim()) {
        const entry = { name: secretName.value.trim(), secret: true };
        if (secretValue.value) entry.value = secretValue.value;
        list.push(entry);
      }
      const shown = (o.headers || []).map((x) => x.secret ? { name: x.name, secret: true } : { name: x.name, value: x.value, secret: false });
      if (JSON.stringify(list.map((x) => Object.assign({}, x, x.secret ? { value: undefined } : {}))) !== JSON.stringify(shown) || secretValue.value) body.headers = list;
      const k = authKind.value;
      const stored = o.auth ? o.auth.type : "none";
      if (k === "none") { if (stored !== "none") body.auth = null; }
      else if (credential.value || k !== stored) {
        if (!credential.value) problems.push(["auth_secret", t("authSecretNeeded")]);
        const auth = { type: k };
        if (k === "basic") Object.assign(auth, { username: username.value, password: credential.value });
        if (k === "bearer") auth.token = credential.value;
        if (k === "oauth2_client_credentials") {
          Object.assign(auth, { token_url: tokenUrl.value.trim(), client_id: clientId.value.trim(), client_secret: credential.value });
          if (scope.value.trim()) auth.scope = scope.value.trim();
          if (audience.value.trim()) auth.audience = audience.value.trim();
        }
        body.auth = auth;
      }
      if (removeCert.checked) body.client_certificate = null;
      else if (cert.value.trim() || key.value.trim()) body.client_certificate = { certificate: cert.value, private_key: key.value };
      const proxy = proxyMode.value === "default" ? null : proxyMode.value === "none" ? "none" : proxyUrl.value.trim();
      set("proxy", proxy);
      set("signature_scheme", ed25519.checked ? ["hmac", "ed25519"] : ["hmac"]);
      if (!existing) {
        // A new webhook: defaults need not be sent.
        for (const [k2, v] of Object.entries(body)) if (v === null || (k2 === "ordering" && v === "none") || (k2 === "signature_scheme" && v.length === 1)) delete body[k2];
      }
      return { body, problems };
    }
    return { el, collect };
  }

  // ---------------------------------------------------------------- webhook form
  // The form of the spec's fields; `existing` for editing. Calls onDone(answer).
  async function webhookForm(existing, onDone) {
    const types = await eventTypes();
    const form = h("form", { class: "card", id: existing ? "edit-form" : "create-form", novalidate: true });
    const errors = {};
    function field(name, label, control, help) {
      errors[name] = h("p", { class: "field-error", id: `${name}-error`, role: "alert" });
      control.setAttribute("aria-describedby", `${name}-error`);
      return h("div", { class: "field", "data-field": name },
        h("label", { for: control.id }, label), control, help ? h("p", { class: "help" }, help) : null, errors[name]);
    }
    const url = h("input", { id: "f-url", name: "url", type: "url", required: true, value: existing ? existing.url : "", placeholder: "https://example.com/webhooks/palo", spellcheck: "false" });
    form.append(field("url", t("url"), url));
    let org = null;
    if (!existing && isAdmin()) {
      org = h("input", { id: "f-organization_id", name: "organization_id", required: true });
      form.append(field("organization_id", t("organization"), org));
    }
    // Events as checkboxes of the known types, plus "*".
    const subscribed = new Set(existing ? existing.events : []);
    const boxes = [];
    const all = h("input", { type: "checkbox", id: "ev-all", value: "*", checked: subscribed.has("*") });
    const fieldset = h("fieldset", { class: "field", "data-field": "events", id: "f-events" },
      h("legend", {}, t("events")),
      h("label", { class: "check" }, all, " ", t("allEvents")));
    for (const name of types) {
      const box = h("input", { type: "checkbox", id: `ev-${name}`, value: name, checked: subscribed.has(name) || subscribed.has("*"), disabled: subscribed.has("*") });
      boxes.push(box);
      fieldset.append(h("label", { class: "check" }, box, " ", h("code", {}, name)));
    }
    all.addEventListener("change", () => {
      for (const b of boxes) { b.disabled = all.checked; if (all.checked) b.checked = true; }
    });
    errors.events = h("p", { class: "field-error", id: "events-error", role: "alert" });
    fieldset.append(errors.events);
    form.append(fieldset);
    // Secret: generated by default (creation only; rotation is its own action).
    let own = null, secret = null;
    if (!existing) {
      const gen = h("input", { type: "radio", name: "secret-mode", id: "secret-generate", value: "generate", checked: true });
      own = h("input", { type: "radio", name: "secret-mode", id: "secret-own", value: "own" });
      secret = h("input", { id: "f-secret", name: "secret", type: "password", autocomplete: "new-password", disabled: true, minlength: 32 });
      secret.hidden = true;
      const toggle = () => { secret.disabled = !own.checked; secret.hidden = !own.checked; if (own.checked) secret.focus(); };
      gen.addEventListener("change", toggle);
      own.addEventListener("change", toggle);
      errors.secret = h("p", { class: "field-error", id: "secret-error", role: "alert" });
      secret.setAttribute("aria-describedby", "secret-error");
      form.append(h("fieldset", { class: "field", "data-field": "secret" },
        h("legend", {}, t("secret")),
        h("label", { class: "check" }, gen, " ", t("generateSecret")),
        h("label", { class: "check" }, own, " ", t("ownSecret")),
        secret, errors.secret));
    }
    const active = h("input", { type: "checkbox", id: "f-active", checked: existing ? existing.active : true });
    form.append(h("div", { class: "field" }, h("label", { class: "check" }, active, " ", t("active"))));
    const desc = h("textarea", { id: "f-description", name: "description", rows: "2" });
    desc.value = existing ? existing.description : "";
    form.append(field("description", t("description"), desc));
    const options = optionsSection(existing, field);
    form.append(options.el);
    const top = h("p", { class: "notice notice-error hidden", role: "alert", id: "form-error" });
    const submit = h("button", { type: "submit", class: "btn btn-primary", id: existing ? "save" : "create" }, existing ? t("save") : t("create"));
    const status = h("span", { class: "form-status", role: "status" });
    form.prepend(top);
    form.append(h("div", { class: "actions" }, submit, status));

    function showError(name, text) {
      const el = errors[name] || null;
      if (el) {
        el.textContent = text;
        const ctl = form.querySelector(`[data-field="${name}"] input:not([disabled]), [data-field="${name}"] textarea`);
        if (ctl) ctl.setAttribute("aria-invalid", "true");
      }
      top.textContent = el ? t("fixErrors") : text;
      top.classList.remove("hidden");
    }
    function clearErrors() {
      for (const el of Object.values(errors)) el.textContent = "";
      for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
      top.classList.add("hidden");
    }
    // The first field in error gets the focus, so a keyboard user lands on it.
    function focusFirstError() {
      const bad = form.querySelector("[aria-invalid='true']") || top;
      if (bad === top) top.setAttribute("tabindex", "-1");
      bad.focus();
    }
    function checkUrl(text) {
      let u;
      try { u = new URL(text); } catch (_) { return t("urlInvalid"); }
      if (u.protocol !== "https:" && u.protocol !== "http:") return t("urlScheme");
      if (u.username || u.password) return t("urlCredentials");
      return null;
    }
    // The server's validation message, in the person's language when we know its meaning.
    function serverMessage(field, message) {
      const m = message.replace(/^[a-z_.[\]0-9]+: /, "");
      if (field === "url") {
        if (/absolute URL/i.test(m)) return t("urlInvalid");
        if (/https/i.test(m) && /must/i.test(m)) return t("urlScheme");
        if (/may not reach|blocked|forbidden/i.test(m)) return t("urlBlocked");
        if (/user:password|credentials/i.test(m)) return t("urlCredentials");
      }
      if (field === "secret" && /32/.test(m)) return t("secretShort");
      return t("refused", { msg: m });
    }
    if (own) own.addEventListener("change", clearErrors);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors();
      status.textContent = "";
      const events = all.checked ? ["*"] : boxes.filter((b) => b.checked).map((b) => b.value);
      let invalid = false;
      const urlProblem = checkUrl(url.value.trim());
      if (urlProblem) { showError("url", urlProblem); invalid = true; }
      if (org && !org.value.trim()) { showError("organization_id", t("orgRequired")); invalid = true; }
      if (events.length === 0) { showError("events", t("eventsRequired")); invalid = true; }
      if (own && own.checked && secret.value.length < 32) { showError("secret", t("secretShort")); invalid = true; }
      const chosen = options.collect();
      for (const [name, text] of chosen.problems) { options.el.open = true; showError(name, text); invalid = true; }
      if (invalid) { focusFirstError(); return; }
      let body = { url: url.value.trim(), events, active: active.checked, description: desc.value };
      if (org) body.organization_id = org.value.trim();
      if (own && own.checked) body.secret = secret.value;
      if (existing) {
        // Only what the person changed here: a field changed elsewhere meanwhile (say, the
        // webhook deactivated by a colleague) is not put back to what this page loaded.
        const same = (k) => JSON.stringify(body[k]) === JSON.stringify(existing[k]);
        body = Object.fromEntries(Object.entries(body).filter(([k]) => !same(k)));
        Object.assign(body, chosen.body);
        if (Object.keys(body).length === 0) { status.textContent = t("saved"); return; }
      } else {
        Object.assign(body, chosen.body);
      }
      submit.disabled = true;
      try {
        const res = existing
          ? await api("PATCH", `/api/webhooks/${encodeURIComponent(existing.id)}`, body)
          : await api("POST", "/api/webhooks", body);
        status.textContent = existing ? t("saved") : t("created");
        onDone(res);
      } catch (err) {
        if (err.code === "validation_failed" && err.field) {
          const name = err.field.split(".")[0].split("[")[0];
          if (options.el.querySelector(`[data-field="${name}"]`)) options.el.open = true;
          showError(errors[name] ? name : "", serverMessage(name, err.message));
        } else {
          showError("", err.message);
        }
        focusFirstError();
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }

  async function newWebhookPage(gen) {
    crumbs([...baseCrumbs(), { label: t("newWebhook") }]);
    let form;
    try {
      form = await webhookForm(null, (created) => {
        const done = h("section", { class: "card", id: "created" }, notice("ok", t("created")));
        if (created.secret) {
          done.append(
            h("p", { class: "warning", role: "alert" }, t("secretOnce")),
            copyable("new-secret", t("secret"), created.secret),
            copyable("new-sw-secret", t("swSecret"), created.standard_webhooks_secret));
        }
        done.append(h("p", {}, h("a", { class: "btn btn-primary", href: `#/webhooks/${encodeURIComponent(created.id)}`, id: "open-webhook" }, t("goToWebhook"))));
        page(t("newWebhook"), done);
      });
    } catch (err) { if (current(gen)) page(t("newWebhook"), failed(err)); return; }
    if (!current(gen)) return;
    page(t("newWebhook"), form);
    $("f-url").focus();
  }

  function copyable(id, label, value) {
    const input = h("input", { id, readonly: true, class: "mono", value, spellcheck: "false" });
    const button = h("button", { type: "button", class: "btn", id: `${id}-copy` }, t("copy"));
    button.addEventListener("click", async () => {
      input.select();
      try { await navigator.clipboard.writeText(value); } catch (_) { document.execCommand && document.execCommand("copy"); }
      button.textContent = t("copied");
    });
    return h("div", { class: "field" }, h("label", { for: id }, label), h("div", { class: "copy-row" }, input, button));
  }

  // ---------------------------------------------------------------- webhook page
  function webhookTabs(id, current) {
    const tab = (key, href) => h("a", { href, class: current === key ? "tab current" : "tab", "aria-current": current === key ? "page" : null, id: `tab-${key}` }, t(key));
    return h("nav", { class: "tabs", "aria-label": t("webhook") },
      tab("overview", `#/webhooks/${encodeURIComponent(id)}`),
      tab("deliveries", `#/webhooks/${encodeURIComponent(id)}/deliveries`));
  }

  async function webhookPage(id, gen) {
    crumbs([...baseCrumbs(), { label: "…" }]);
    page(t("webhook"), h("p", {}, t("loading")));
    let w;
    try { w = await api("GET", `/api/webhooks/${encodeURIComponent(id)}`); } catch (err) { if (current(gen)) page(t("webhook"), failed(err)); return; }
    if (!current(gen)) return;
    crumbs([...baseCrumbs(), { label: w.url }]);
    const chart = h("section", { class: "card", id: "chart" }, h("h2", {}, t("last24h")), h("p", {}, t("loading")));
    const testResult = h("div", { id: "test-result", "aria-live": "polite" });
    const testBtn = h("button", { type: "button", class: "btn", id: "send-test" }, t("sendTest"));
    testBtn.addEventListener("click", async () => {
      testBtn.disabled = true;
      clear(testResult);
      testResult.append(h("p", {}, t("redelivering")));
      try {
        const res = await api("POST", `/api/webhooks/${encodeURIComponent(w.id)}/test`);
        clear(testResult);
        testResult.append(attemptSummary(res.attempt, t("testSent")),
          h("p", {}, h("a", { href: `#/deliveries/${encodeURIComponent(res.delivery.id)}` }, t("delivery"), " ", res.delivery.id)));
        loadChart(w.id, chart);
      } catch (err) {
        clear(testResult);
        testResult.append(notice("error", errorText(err)));
      } finally { testBtn.disabled = false; }
    });
    const toggle = h("button", { type: "button", class: "btn", id: "toggle-active" }, w.active ? t("deactivate") : t("activate"));
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      try { await api("PATCH", `/api/webhooks/${encodeURIComponent(w.id)}`, { active: !w.active }); if (current(gen)) webhookPage(id, gen); }
      catch (err) { toggle.disabled = false; testResult.append(notice("error", errorText(err))); }
    });
    const del = h("button", { type: "button", class: "btn btn-danger", id: "delete" }, t("delete"));
    del.addEventListener("click", () => confirmDelete(w));
    const facts = h("dl", { class: "facts" },
      h("dt", {}, "ID"), h("dd", { class: "mono" }, w.id),
      h("dt", {}, t("organization")), h("dd", {}, w.organization_id),
      h("dt", {}, t("status")), h("dd", { id: "active-state" }, w.active ? t("active") : t("inactive"),
        w.disabled ? h("span", { class: "badge badge-failed", id: "disabled-state" }, t("disabledState")) : null),
      h("dt", {}, t("events")), h("dd", {}, w.events.join(", ")),
      h("dt", {}, t("description")), h("dd", { id: "webhook-description" }, w.description || h("span", { class: "muted" }, "—")),
      h("dt", {}, t("createdM")), h("dd", {}, timeEl(w.created_at)));
    if ((w.signature_scheme || []).includes("ed25519")) {
      const key = h("dd", { class: "mono", id: "public-key" }, "…");
      facts.append(h("dt", {}, t("publicKey")), key);
      api("GET", `/api/webhooks/${encodeURIComponent(w.id)}/public-key`)
        .then((res) => { key.textContent = res.public_key; })
        .catch((err) => { key.textContent = errorText(err); });
    }
    const editSection = h("details", { class: "card", id: "edit" }, h("summary", {}, t("edit")));
    const form = await webhookForm(w, () => { if (current(gen)) webhookPage(id, gen); });
    if (!current(gen)) return;
    editSection.append(form);
    page(w.url,
      w.description ? h("p", { class: "subtitle" }, w.description) : null,
      webhookTabs(w.id, "overview"),
      w.disabled ? disabledCard(w) : null,
      h("section", { class: "card" }, facts, h("div", { class: "actions" }, testBtn, toggle, del), testResult),
      chart, editSection);
    loadChart(w.id, chart);
  }

  // Why and since when the daemon disabled the webhook (issue 15), what it holds, and the
  // Enable button with the choice of what becomes of the held deliveries.
  function disabledCard(w) {
    const d = w.disabled;
    const reason = d.reason === "gone" ? t("reasonGone")
      : d.reason === "failing" ? t("reasonFailing", { since: absTime(d.failing_since || d.at) })
      : t("reasonOther", { reason: d.reason });
    const facts = h("dl", { class: "facts" },
      h("dt", {}, t("disabledSince")), h("dd", { id: "disabled-at" }, timeEl(d.at, true)),
      d.status_code !== null && d.status_code !== undefined ? [h("dt", {}, t("statusCode")), h("dd", { id: "disabled-status" }, `HTTP ${d.status_code}`)] : null,
      d.last_error ? [h("dt", {}, t("lastError")), h("dd", { id: "disabled-error" }, d.last_error)] : null,
      h("dt", {}, t("heldCount")), h("dd", { id: "held-count" }, num(w.held_deliveries ?? 0)),
      d.delivery_id ? [h("dt", {}, t("delivery")), h("dd", { class: "mono" }, h("a", { href: `#/deliveries/${encodeURIComponent(d.delivery_id)}` }, d.delivery_id))] : null);
    const deliver = h("input", { type: "checkbox", id: "deliver-held", checked: true });
    const button = h("button", { type: "button", class: "btn btn-primary", id: "enable" }, t("enable"));
    const card = h("section", { class: "card", id: "disabled", role: "region", "aria-labelledby": "disabled-title" },
      h("h2", { id: "disabled-title" }, t("disabledTitle")),
      h("p", { id: "disabled-reason" }, reason), facts, h("p", { class: "muted" }, t("heldHelp")),
      h("div", { class: "actions" }, h("label", { for: "deliver-held" }, deliver, " ", t("deliverHeld")), button));
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = t("enabling");
      const deliverHeld = deliver.checked;
      try {
        await api("POST", `/api/webhooks/${encodeURIComponent(w.id)}/enable`, { deliver_held: deliverHeld });
        clear(card);
        card.append(notice("ok", deliverHeld ? t("enabledDelivered") : t("enabledDiscarded")));
        const state = $("disabled-state");
        if (state) state.remove();
      } catch (err) {
        button.disabled = false;
        button.textContent = t("enable");
        card.append(notice("error", errorText(err)));
      }
    });
    return card;
  }

  function confirmDelete(w) {
    const dialog = h("dialog", { id: "confirm-delete", "aria-labelledby": "confirm-title" });
    const yes = h("button", { type: "button", class: "btn btn-danger", id: "confirm-delete-yes" }, t("deleteConfirm"));
    const no = h("button", { type: "button", class: "btn", id: "confirm-delete-no" }, t("cancel"));
    dialog.append(h("h2", { id: "confirm-title" }, t("deleteTitle")), h("p", {}, w.url), h("p", {}, t("deleteText")), h("div", { class: "actions" }, no, yes));
    document.body.append(dialog);
    no.addEventListener("click", () => { dialog.close(); });
    dialog.addEventListener("close", () => dialog.remove());
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await api("DELETE", `/api/webhooks/${encodeURIComponent(w.id)}`).catch((err) => {
          if (err.status !== 404) throw err; // already deleted: the wish is granted
        });
        dialog.close();
        location.hash = "#/webhooks";
      } catch (err) {
        yes.disabled = false;
        dialog.append(notice("error", errorText(err)));
      }
    });
    dialog.showModal();
    no.focus();
  }

  async function loadChart(id, section) {
    let st;
    try { st = await api("GET", `/api/webhooks/${encodeURIComponent(id)}/stats?hours=24`); } catch (err) {
      clear(section); section.append(h("h2", {}, t("last24h")), failed(err)); return;
    }
    clear(section);
    section.append(h("h2", {}, t("last24h")));
    const judged = st.totals.succeeded + st.totals.failed + st.totals.retrying;
    section.append(h("p", { class: "summary", id: "stats-summary" },
      `${t("successRate")}${t("colon")}`, st.success_rate === null ? "—" : `${pct(st.success_rate)} (${st.totals.succeeded}/${judged})`,
      ` · ${t("attempts")}${t("colon")}${num(st.attempts)}`));
    if (st.truncated) section.append(notice("info", t("truncated", { n: "20 000" })));
    const any = st.buckets.some((b) => STATUSES.some((k) => b[k] > 0) || b.attempts > 0);
    if (!any) { section.append(notice("info", t("noData"))); return; }
    section.append(h("h3", {}, t("perHour")), barChart(st.buckets), legend(),
      h("h3", {}, t("latency")), latencyChart(st.buckets),
      h("ul", { class: "legend" },
        h("li", {}, h("span", { class: "swatch swatch-p50" }), t("p50")),
        h("li", {}, h("span", { class: "swatch swatch-p95" }), t("p95"))));
  }

  const CHART_W = 1000, CHART_H = 180, PAD_L = 58, PAD_B = 22, PAD_T = 10;

  // The smallest 1, 2 or 5 × 10^k at or above `max`: the axis top, halved cleanly.
  function niceMax(max) {
    const p = Math.pow(10, Math.floor(Math.log10(Math.max(1, max))));
    for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
    return 10 * p;
  }

  function axes(svg, max, buckets, unit) {
    const plotH = CHART_H - PAD_B - PAD_T;
    const fracs = max >= 2 ? [0, 0.5, 1] : [0, 1];
    for (const frac of fracs) {
      const y = PAD_T + plotH * (1 - frac);
      svg.append(s("line", { x1: PAD_L, x2: CHART_W, y1: y, y2: y, class: "grid" }));
      svg.append(s("text", { x: PAD_L - 6, y: y + 4, class: "axis", "text-anchor": "end" }, `${num(max * frac)}${unit}`));
    }
    const step = (CHART_W - PAD_L) / buckets.length;
    buckets.forEach((b, i) => {
      if (i % 6 === 0 || i === buckets.length - 1) {
        const d = new Date(b.start);
        const label = d.toLocaleTimeString(lang === "fr" ? "fr-FR" : "en-GB", { hour: "2-digit", minute: "2-digit" });
        svg.append(s("text", { x: PAD_L + step * i + step / 2, y: CHART_H - 6, class: "axis", "text-anchor": "middle" }, label));
      }
    });
    return { plotH, step };
  }

  function barChart(buckets) {
    const order = ["succeeded", "retrying", "pending", "failed", "cancelled"];
    const max = niceMax(Math.max(1, ...buckets.map((b) => order.reduce((n, k) => n + b[k], 0))));
    const svg = s("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, class: "chart", role: "img", id: "chart-deliveries",
      "aria-label": t("perHour") });
    const { plotH, step } = axes(svg, max, buckets, "");
    buckets.forEach((b, i) => {
      let y = PAD_T + plotH;
      const x = PAD_L + step * i + 1;
      const hour = absTime(b.start);
      for (const k of order) {
        if (!b[k]) continue;
        const hgt = (b[k] / max) * plotH;
        y -= hgt;
        svg.append(s("rect", { x, y, width: Math.max(1, step - 2), height: hgt, class: `bar bar-${k}` },
          s("title", {}, `${hour}: ${b[k]} ${statusName(k)}`)));
      }
    });
    return svg;
  }

  function latencyChart(buckets) {
    const max = niceMax(Math.max(1, ...buckets.map((b) => b.latency_p95_ms || 0)));
    const svg = s("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, class: "chart", role: "img", id: "chart-latency",
      "aria-label": t("latency") });
    const { plotH, step } = axes(svg, max, buckets, " ms");
    for (const key of ["latency_p50_ms", "latency_p95_ms"]) {
      const pts = [];
      buckets.forEach((b, i) => {
        if (b[key] === null || b[key] === undefined) return;
        const x = PAD_L + step * i + step / 2;
        const y = PAD_T + plotH * (1 - b[key] / max);
        pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
        svg.append(s("circle", { cx: x, cy: y, r: 3, class: `dot ${key === "latency_p50_ms" ? "line-p50" : "line-p95"}` },
          s("title", {}, `${absTime(b.start)}: ${key === "latency_p50_ms" ? "p50" : "p95"} ${b[key]} ms (${b.attempts})`)));
      });
      if (pts.length > 1) svg.append(s("polyline", { points: pts.join(" "), class: `line ${key === "latency_p50_ms" ? "line-p50" : "line-p95"}` }));
    }
    return svg;
  }

  function legend() {
    return h("ul", { class: "legend" }, ["succeeded", "retrying", "pending", "failed", "cancelled"].map((k) =>
      h("li", {}, h("span", { class: `swatch bar-${k}` }), statusName(k))));
  }

  // ---------------------------------------------------------------- deliveries tab
  // The filter bar searches the organization's delivery log (`GET /api/deliveries`) within
  // this webhook: status, last outcome, event type, creation time range, event id.
  const OUTCOMES = ["2xx", "3xx", "4xx", "5xx", "other_status", "timeout", "connect", "dns", "tls", "io", "blocked_address", "auth"];
  const FILTERS = ["status", "outcome", "event_type", "since", "until", "event_id"];
  Object.assign(MESSAGES.en, {
    lastOutcome: "Last outcome", allOutcomes: "All outcomes", since: "From", until: "To",
    eventIdFilter: "Event id", filter: "Filter", clearFilters: "Clear filters", filters: "Filters",
    badRange: "The start of the range is after its end.",
    outcomeNames: { "2xx": "2xx (success)", "3xx": "3xx (redirect)", "4xx": "4xx", "5xx": "5xx", other_status: "other status", timeout: "timeout", connect: "connection failed", dns: "DNS lookup failed", tls: "TLS failed", io: "connection broken", blocked_address: "blocked address", auth: "receiver credentials failed" },
  });
  Object.assign(MESSAGES.fr, {
    lastOutcome: "Dernier résultat", allOutcomes: "Tous les résultats", since: "Du", until: "Au",
    eventIdFilter: "Identifiant d'événement", filter: "Filtrer", clearFilters: "Effacer les filtres", filters: "Filtres",
    badRange: "Le début de la période est après sa fin.",
    outcomeNames: { "2xx": "2xx (réussite)", "3xx": "3xx (redirection)", "4xx": "4xx", "5xx": "5xx", other_status: "autre statut", timeout: "délai dépassé", connect: "connexion impossible", dns: "échec DNS", tls: "échec TLS", io: "connexion interrompue", blocked_address: "adresse bloquée", auth: "identifiants du destinataire refusés" },
  });
  const outcomeName = (o) => MESSAGES[lang].outcomeNames[o] ?? o;

  // An RFC 3339 time as the value of a datetime-local input (local time, to the minute).
  function toLocalInput(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return "";
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  // A datetime-local value back to RFC 3339 (UTC); `end` takes the whole last minute.
  function fromLocalInput(value, end) {
    if (!value) return "";
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) return "";
    if (end) d.setSeconds(59, 999);
    return d.toISOString();
  }

  async function deliveriesPage(id, params, gen) {
    let w;
    try { w = await api("GET", `/api/webhooks/${encodeURIComponent(id)}`); } catch (err) {
      if (current(gen)) { crumbs(baseCrumbs()); page(t("deliveries"), failed(err)); }
      return;
    }
    if (!current(gen)) return;
    crumbs([...baseCrumbs(), { label: w.url, href: `#/webhooks/${encodeURIComponent(id)}` }, { label: t("deliveries") }]);
    const types = await eventTypes();
    if (!current(gen)) return;
    const filters = {};
    for (const k of FILTERS) filters[k] = params.get(k) || "";
    const cursor = params.get("cursor") || "";
    const trail = (params.get("trail") || "").split(",").filter(Boolean);
    const link = (p) => {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(p)) if (v) q.set(k, v);
      const qs = q.toString();
      return `#/webhooks/${encodeURIComponent(id)}/deliveries${qs ? `?${qs}` : ""}`;
    };
    const select = (name, label, all, values, nameOf) => h("select", { id: `filter-${name}`, name, "aria-label": label },
      h("option", { value: "" }, all),
      values.map((k) => h("option", { value: k, selected: k === filters[name] }, nameOf(k))));
    const statusSel = select("status", t("status"), t("allStatuses"), STATUSES, statusName);
    const outcomeSel = select("outcome", t("lastOutcome"), t("allOutcomes"), OUTCOMES, outcomeName);
    const typeSel = select("event_type", t("eventType"), t("allTypes"), ["webhook.test", ...types], (k) => k);
    const sinceIn = h("input", { type: "datetime-local", id: "filter-since", name: "since", value: filters.since ? toLocalInput(filters.since) : "" });
    const untilIn = h("input", { type: "datetime-local", id: "filter-until", name: "until", value: filters.until ? toLocalInput(filters.until) : "" });
    const eventIn = h("input", { type: "search", id: "filter-event-id", name: "event_id", value: filters.event_id, placeholder: "evt_…", autocomplete: "off", spellcheck: "false" });
    const rangeError = h("p", { class: "field-error", id: "filter-error", role: "alert" });
    const chosen = () => ({
      status: statusSel.value, outcome: outcomeSel.value, event_type: typeSel.value,
      since: fromLocalInput(sinceIn.value, false), until: fromLocalInput(untilIn.value, true),
      event_id: eventIn.value.trim(),
    });
    const apply = () => {
      const f = chosen();
      if (f.since && f.until && f.since > f.until) { rangeError.textContent = t("badRange"); return; }
      location.hash = link(f);
    };
    const form = h("form", { class: "toolbar filters", id: "delivery-filters", role: "search", "aria-label": t("filters") },
      h("label", { class: "inline" }, `${t("status")} `, statusSel),
      h("label", { class: "inline" }, `${t("lastOutcome")} `, outcomeSel),
      h("label", { class: "inline" }, `${t("eventType")} `, typeSel),
      h("label", { class: "inline" }, `${t("since")} `, sinceIn),
      h("label", { class: "inline" }, `${t("until")} `, untilIn),
      h("label", { class: "inline" }, `${t("eventIdFilter")} `, eventIn),
      h("button", { type: "submit", class: "btn", id: "filter-apply" }, t("filter")),
      FILTERS.some((k) => filters[k]) ? h("a", { class: "btn", id: "filter-clear", href: link({}) }, t("clearFilters")) : null,
      rangeError);
    form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
    for (const sel of [statusSel, outcomeSel, typeSel]) sel.addEventListener("change", apply);
    const liveNote = h("span", { class: "live", id: "live" }, t("live"));
    const body = h("div", { id: "deliveries-body" }, h("p", {}, t("loading")));
    page(w.url, webhookTabs(id, "deliveries"), form, h("div", { class: "toolbar" }, liveNote), body);

    async function load() {
      const q = new URLSearchParams({ organization_id: w.organization_id, webhook_id: w.id, limit: String(PAGE_SIZE) });
      for (const k of FILTERS) if (filters[k]) q.set(k, filters[k]);
      if (cursor) q.set("cursor", cursor);
      let res;
      try { res = await api("GET", `/api/deliveries?${q}`); } catch (err) {
        if (!current(gen)) return;
        clear(body); body.append(failed(err));
        lastSignature = "";
        // Gone (deleted meanwhile) or a filter refused: stop refreshing; others: try again.
        if (err.status !== 404 && err.status !== 400) schedule();
        return;
      }
      if (!current(gen)) return;
      // A refresh that changed nothing redraws nothing (focus and screen readers stay put);
      // one that did keeps the focus on the same control when it is still there.
      const signature = JSON.stringify(res);
      const stamp = `${t("live")} · ${t("updated", { time: new Date().toLocaleTimeString(lang === "fr" ? "fr-FR" : "en-GB") })}`;
      if (signature === lastSignature) { liveNote.textContent = stamp; schedule(); return; }
      lastSignature = signature;
      const focusedId = body.contains(document.activeElement) ? document.activeElement.id : "";
      clear(body);
      if (res.data.length === 0) {
        body.append(notice("info", cursor ? t("noOlder") : t("noDeliveries")));
      } else {
        const tbody = h("tbody");
        for (const d of res.data) {
          tbody.append(h("tr", { "data-delivery": d.id },
            h("td", { "data-label": t("createdAt") }, timeEl(d.created_at)),
            h("td", { "data-label": t("eventType") }, h("code", {}, d.event_type)),
            h("td", { class: "mono", "data-label": t("eventId") }, d.event_id),
            h("td", { "data-label": t("status") }, badge(d.status)),
            h("td", { "data-label": t("lastOutcome"), "data-outcome": d.last_outcome || "" }, d.last_outcome ? outcomeName(d.last_outcome) : h("span", { class: "muted" }, t("none"))),
            h("td", { class: "num", "data-label": t("attempts") }, String(d.attempt_count)),
            h("td", { "data-label": t("nextAttempt") }, d.next_attempt_at ? timeEl(d.next_attempt_at, true) : h("span", { class: "muted" }, t("whenNone"))),
            h("td", {}, h("a", { href: `#/deliveries/${encodeURIComponent(d.id)}`, class: "btn btn-small", id: `view-${d.id}`, "aria-label": `${t("view")} ${d.id}` }, t("view")))));
        }
        body.append(tableWrap(h("table", { id: "deliveries" },
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, t("createdAt")), h("th", { scope: "col" }, t("eventType")),
            h("th", { scope: "col" }, t("eventId")), h("th", { scope: "col" }, t("status")),
            h("th", { scope: "col" }, t("lastOutcome")),
            h("th", { scope: "col", class: "num" }, t("attempts")), h("th", { scope: "col" }, t("nextAttempt")),
            h("th", { scope: "col" }, h("span", { class: "sr-only" }, t("view"))))),
          tbody)));
      }
      const pager = h("div", { class: "pager" });
      if (cursor) {
        const back = trail.slice(0, -1);
        pager.append(h("a", { class: "btn", id: "newer-page", href: link({ ...filters, cursor: trail[trail.length - 1] || "", trail: back.join(",") }) }, t("newer")));
      }
      if (res.next_cursor) {
        pager.append(h("a", { class: "btn", id: "older-page", href: link({ ...filters, cursor: res.next_cursor, trail: [...trail, cursor].join(",") }) }, t("older")));
      }
      body.append(pager);
      liveNote.textContent = stamp;
      if (focusedId && $(focusedId)) $(focusedId).focus({ preventScroll: true });
      schedule();
    }
    let lastSignature = "";
    // The next refresh is armed when this one has finished, so slow answers never pile up.
    function schedule() {
      later(() => { if (document.visibilityState === "visible") load(); else schedule(); }, LIVE_REFRESH_MS, gen);
    }
    await load();
  }

  // ---------------------------------------------------------------- delivery page
  function attemptSummary(a, prefix) {
    const ok = attemptOk(a);
    return h("p", { class: `notice ${ok ? "notice-ok" : "notice-error"}`, role: "status", id: "attempt-result" },
      `${prefix}: ${attemptResult(a)} · ${a.duration_ms} ms`,
      a.error_detail ? ` · ${a.error_detail}` : "");
  }

  async function deliveryPage(id, gen) {
    crumbs([...baseCrumbs(), { label: "…" }]);
    page(t("delivery"), h("p", {}, t("loading")));
    let d;
    try { d = await api("GET", `/api/deliveries/${encodeURIComponent(id)}`); } catch (err) {
      if (current(gen)) page(t("delivery"), failed(err));
      return;
    }
    let w = null;
    try { w = await api("GET", `/api/webhooks/${encodeURIComponent(d.webhook_id)}`); } catch (_) { w = null; }
    if (!current(gen)) return;
    const whHref = `#/webhooks/${encodeURIComponent(d.webhook_id)}`;
    crumbs([...baseCrumbs(),
      { label: w ? w.url : t("deletedWebhook"), href: w ? whHref : null },
      { label: t("deliveries"), href: w ? `${whHref}/deliveries` : null },
      { label: d.id }]);

    const summary = h("section", { class: "card", id: "delivery-summary" });
    const attemptsBox = h("section", { class: "card", id: "attempts" });
    const resultBox = h("div", { id: "redeliver-result", "aria-live": "polite" });
    const button = h("button", { type: "button", class: "btn btn-primary", id: "redeliver" }, t("redeliver"));
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = t("redelivering");
      clear(resultBox);
      try {
        const res = await api("POST", `/api/deliveries/${encodeURIComponent(d.id)}/redeliver`);
        resultBox.append(attemptSummary(res.attempt, t("attemptN", { n: res.attempt.number })));
        const fresh = await api("GET", `/api/deliveries/${encodeURIComponent(d.id)}`);
        renderSummary(fresh);
        renderAttempts(fresh);
      } catch (err) {
        resultBox.append(notice("error", errorText(err)));
      } finally {
        button.disabled = false;
        button.textContent = t("redeliver");
        button.focus({ preventScroll: true });
      }
    });

    function renderSummary(cur) {
      clear(summary);
      summary.append(h("dl", { class: "facts" },
        h("dt", {}, t("status")), h("dd", { id: "delivery-status" }, badge(cur.status)),
        h("dt", {}, t("webhook")), h("dd", {}, w ? h("a", { href: whHref }, w.url) : h("span", { class: "muted" }, t("deletedWebhook"))),
        h("dt", {}, t("eventType")), h("dd", {}, h("code", {}, cur.event_type)),
        h("dt", {}, t("eventId")), h("dd", { class: "mono" }, cur.event_id),
        h("dt", {}, t("attempts")), h("dd", { id: "attempt-count" }, String(cur.attempt_count)),
        lastAttemptFacts(cur),
        h("dt", {}, t("nextAttempt")), h("dd", {}, cur.next_attempt_at ? timeEl(cur.next_attempt_at, true) : h("span", { class: "muted" }, t("whenNone"))),
        h("dt", {}, t("createdAt")), h("dd", {}, timeEl(cur.created_at))),
      h("div", { class: "actions" }, button,
        cur.status === "succeeded" ? h("span", { class: "muted", id: "again-hint" }, t("againHint")) : null), resultBox);
    }

    // The newest attempt's verdict, first thing a person looks for: "why did it fail?".
    function lastAttemptFacts(cur) {
      const last = cur.attempts && cur.attempts[cur.attempts.length - 1];
      if (!last) return null;
      const ok = attemptOk(last);
      const why = last.error_detail || (!ok && last.response_body ? last.response_body.slice(0, 160) : "");
      return [h("dt", {}, t("lastResult")),
        h("dd", { id: "last-result" }, h("span", { class: `result ${ok ? "ok" : "ko"}` }, attemptResult(last)),
          why ? h("span", { class: "muted" }, ` · ${why}${why.length === 160 ? "…" : ""}`) : null)];
    }

    function renderAttempts(cur) {
      clear(attemptsBox);
      attemptsBox.append(h("h2", {}, t("attemptsLog")));
      if (!cur.attempts || cur.attempts.length === 0) { attemptsBox.append(h("p", {}, t("noAttempts"))); return; }
      const list = h("ol", { class: "attempts", reversed: true });
      for (const a of [...cur.attempts].reverse()) {
        const ok = attemptOk(a);
        const bodyText = a.response_body === "" ? t("emptyBody") : a.response_body;
        list.append(h("li", { class: `attempt ${ok ? "ok" : "ko"}`, "data-attempt": a.number },
          h("div", { class: "attempt-head" },
            h("strong", {}, `${t("number")}${a.number}`),
            h("span", { class: `result ${ok ? "ok" : "ko"}`, "data-result": "" }, attemptResult(a)),
            timeEl(a.started_at),
            h("span", {}, `${a.duration_ms} ms`),
            h("span", { class: "muted" }, a.trigger === "manual" ? t("manualLong") : t("scheduledLong"))),
          a.error_detail ? h("p", { class: "detail" }, a.error_detail) : null,
          a.retry_after_seconds !== null && a.retry_after_seconds !== undefined ? h("p", { class: "detail" }, t("retryAfter", { s: a.retry_after_seconds })) : null,
          h("details", { class: "body", open: cur.attempts.length <= 3 || a.number === cur.attempts.length },
            h("summary", {}, t("responseBody"), a.response_body_truncated ? h("span", { class: "trunc" }, ` (${t("truncatedBody")})`) : null),
            h("pre", { class: "response-body" }, bodyText),
            a.response_body_truncated ? h("p", { class: "trunc" }, `… ${t("truncatedBody")}`) : null)));
      }
      attemptsBox.append(list);
    }

    const payloadBox = h("section", { class: "card", id: "payload" }, h("h2", {}, t("payload")), h("p", {}, t("loading")));
    renderSummary(d);
    renderAttempts(d);
    page(`${t("delivery")} ${d.id}`, summary, payloadBox, attemptsBox);
    try {
      const q = isAdmin() ? `?organization_id=${encodeURIComponent(d.organization_id)}` : "";
      const raw = await api("GET", `/api/events/${encodeURIComponent(d.event_id)}${q}`, undefined, { raw: true });
      if (!current(gen)) return;
      // The envelope's fields as the daemon returned them, byte for byte (numbers are never
      // re-encoded by the browser: 9007199254740993 stays 9007199254740993).
      const fields = topLevelFields(raw);
      const envelope = "{" + ["event_id", "event_type", "timestamp", "organization_id", "data"]
        .filter((k) => k in fields).map((k) => `${JSON.stringify(k)}:${fields[k]}`).join(",") + "}";
      clear(payloadBox);
      payloadBox.append(h("h2", {}, t("payload")), h("pre", { class: "payload", id: "payload-json" }, prettyJson(envelope)));
      const deletedAt = fields.payload_deleted_at && JSON.parse(fields.payload_deleted_at);
      if (deletedAt) payloadBox.append(notice("info", t("payloadDeletedAt", { time: absTime(deletedAt) })));
    } catch (err) {
      if (!current(gen)) return;
      clear(payloadBox);
      payloadBox.append(h("h2", {}, t("payload")), failed(err));
    }
  }

  // ---------------------------------------------------------------- jobs (issue 15)
  async function jobsPage(gen) {
    crumbs([...baseCrumbs(), { label: t("jobs") }]);
    page(t("jobs"), h("p", {}, t("loading")));
    async function cancelJob(id, button) {
      button.disabled = true;
      try {
        await api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
      } catch (err) {
        if (!current(gen)) return;
        $("main").append(notice("error", err.code === "job_finished" ? t("jobFinished") : errorText(err)));
      }
      if (current(gen)) load();
    }
    async function load() {
      let res;
      try { res = await api("GET", `/api/jobs?limit=${PAGE_SIZE}`); } catch (err) { if (current(gen)) page(t("jobs"), failed(err)); return; }
      if (!current(gen)) return;
      if (res.data.length === 0) {
        page(t("jobs"), notice("info", t("noJobs")));
        later(load, 2000, gen);
        return;
      }
      const tbody = h("tbody");
      for (const j of res.data) {
        const done = j.succeeded + j.failed;
        const active = j.state === "queued" || j.state === "running";
        const cancel = active
          ? h("button", { type: "button", class: "btn", "data-cancel": j.id }, t("cancelJob"))
          : null;
        if (cancel) cancel.addEventListener("click", () => cancelJob(j.id, cancel));
        tbody.append(h("tr", { "data-job": j.id, "data-state": j.state },
          h("td", { "data-label": t("kind") }, t("jobKinds")[j.kind] || j.kind),
          h("td", { class: "url", "data-label": t("webhook") },
            h("a", { href: `#/webhooks/${encodeURIComponent(j.webhook_id)}` }, j.webhook_id)),
          h("td", { "data-label": t("state"), "data-col": "state" }, t("jobStates")[j.state] || j.state),
          h("td", { "data-label": t("progress"), "data-col": "progress" },
            h("progress", { max: String(Math.max(j.queued, 1)), value: String(done) }),
            " ", t("progressOf", { done, queued: j.queued })),
          h("td", { class: "num", "data-label": t("matched"), "data-col": "matched" }, String(j.matched)),
          h("td", { class: "num", "data-label": t("succeededN"), "data-col": "succeeded" }, String(j.succeeded)),
          h("td", { class: "num", "data-label": t("failedN"), "data-col": "failed" }, String(j.failed)),
          h("td", { "data-label": t("createdAt") }, timeEl(j.created_at, true)),
          h("td", {}, cancel)));
      }
      const table = h("table", { id: "jobs" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, t("kind")), h("th", { scope: "col" }, t("webhook")),
          h("th", { scope: "col" }, t("state")), h("th", { scope: "col" }, t("progress")),
          h("th", { scope: "col", class: "num" }, t("matched")),
          h("th", { scope: "col", class: "num" }, t("succeededN")),
          h("th", { scope: "col", class: "num" }, t("failedN")),
          h("th", { scope: "col" }, t("createdAt")), h("th", { scope: "col" }, ""))),
        tbody);
      page(t("jobs"), tableWrap(table), h("p", { class: "muted" }, t("jobLive")));
      later(load, 2000, gen);
    }
    await load();
  }

  // ---------------------------------------------------------------- router
  async function route() {
    generation += 1;
    stopTimers();
    // A dialog belongs to the page it was opened on.
    for (const d of document.querySelectorAll("dialog")) d.remove();
    account();
    const hash = location.hash || "#/webhooks";
    if (!hash.startsWith("#/")) return; // in-page anchors (skip link)
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    if (!sessionStorage.getItem(TOKEN_KEY)) { signInPage(); return; }
    if (parts[0] === "signin") { location.hash = "#/webhooks"; return; }
    try {
      const gen = generation;
      if (parts[0] === "webhooks" && parts.length === 1) await webhooksPage(params, gen);
      else if (parts[0] === "webhooks" && parts[1] === "new") await newWebhookPage(gen);
      else if (parts[0] === "webhooks" && parts.length === 2) await webhookPage(parts[1], gen);
      else if (parts[0] === "webhooks" && parts[2] === "deliveries") await deliveriesPage(parts[1], params, gen);
      else if (parts[0] === "deliveries" && parts.length === 2) await deliveryPage(parts[1], gen);
      else if (parts[0] === "jobs" && parts.length === 1) await jobsPage(gen);
      else { crumbs(baseCrumbs()); page(t("notFound")); }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return; // signed out already
      page(t("webhooks"), failed(err));
    }
    const main = $("main");
    if (document.activeElement === document.body) main.focus({ preventScroll: true });
  }

  window.addEventListener("hashchange", route);
  document.addEventListener("DOMContentLoaded", () => {
    if (!location.hash) location.replace("#/webhooks");
    route();
  });
})();
