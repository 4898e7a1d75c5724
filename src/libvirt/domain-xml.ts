import { XMLBuilder, XMLParser, XMLValidator } from "fast-xml-parser";
import { InputError } from "../model/errors.js";
import { type ElementSpan, insertElement, removeElement, type Render, scanElements } from "./xml-text.js";

// libvirt domain XML, patched as text: vmrouted splices its own elements in and
// out, and every other byte of the document stays as it was (quotes, comments,
// CDATA, whitespace, other applications' metadata). fast-xml-parser checks
// well-formedness and reads values; xml-scan.ts says where elements are; the
// fragments inserted are built by XMLBuilder (escaping) with indentation copied
// from their new siblings. Domain XML from a hook is untrusted input: DTDs and
// entity declarations are refused outright, and so is anything large.

export const XMLNS = "https://vmrouted.dev/xmlns/interfaces/1";
export const XMLNS_PREFIX = "vmrouted";
const MAX_XML = 1024 * 1024;

const READ_OPTIONS = {
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: "@_",
  parseTagValue: false,
  parseAttributeValue: false,
  processEntities: false,
  trimValues: false,
  commentPropName: "#comment",
  cdataPropName: "#cdata",
} as const;
const BUILD_OPTIONS = { preserveOrder: true, ignoreAttributes: false, attributeNamePrefix: "@_", suppressEmptyNode: true } as const;

/** One node of fast-xml-parser's order-preserving tree: `{ tag: children, ":@": attributes }`. */
type XmlNode = Record<string, unknown> & { ":@"?: Record<string, string> };

export interface RoutedInterface {
  network: string;
  ip: string;
  /** The guest's IPv6 address, when its network has a prefix6. */
  ip6?: string;
  /** Guest MAC. */
  mac: string;
  tap: string;
}

/** An element as read: its attributes and text (entity references decoded), and where it is in the text. */
export interface DomainElement {
  name: string;
  attributes: Record<string, string>;
  text: string;
  span: ElementSpan;
  children: DomainElement[];
}

/** A domain document: its text, and the `<domain>` element read from it. add/remove replace both. */
export interface DomainXml {
  text: string;
  domain: DomainElement;
}

// ---- reading ------------------------------------------------------------------

function tagOf(node: XmlNode): string | undefined {
  return Object.keys(node).find((k) => k !== ":@");
}

function isElement(node: XmlNode): boolean {
  const tag = tagOf(node);
  return tag !== undefined && !tag.startsWith("#") && !tag.startsWith("?");
}

const ENTITY = /&(?:#x([0-9a-fA-F]{1,6})|#([0-9]{1,7})|(amp|lt|gt|quot|apos));/g;
const NAMED: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

/** The five predefined entities and character references; anything else stays as written (nothing is ever declared). */
function decode(raw: string): string {
  return raw.replace(ENTITY, (whole, hex?: string, dec?: string, name?: string) => {
    if (name) return NAMED[name]!;
    const code = hex ? parseInt(hex, 16) : Number(dec);
    return code <= 0x10ffff ? String.fromCodePoint(code) : whole;
  });
}

/** The parser's element and the scanner's, side by side: they must agree on every element. */
function zip(node: XmlNode, span: ElementSpan): DomainElement {
  const name = tagOf(node)!;
  const kids = (node[name] ?? []) as XmlNode[];
  const elements = kids.filter(isElement);
  if (name !== span.name || elements.length !== span.children.length) throw new Error(`element <${name}> read two ways`);
  const attributes: Record<string, string> = {};
  for (const [k, v] of Object.entries(node[":@"] ?? {})) attributes[k.slice(2)] = decode(v);
  const text = decode(kids.map((k) => (typeof k["#text"] === "string" ? k["#text"] : "")).join(""));
  return { name, attributes, text, span, children: elements.map((e, i) => zip(e, span.children[i]!)) };
}

function read(text: string, what: string): DomainXml {
  let nodes: XmlNode[];
  let span: ElementSpan;
  try {
    nodes = new XMLParser(READ_OPTIONS).parse(text) as XmlNode[];
    span = scanElements(text);
  } catch (e) {
    throw new InputError(`${what}: cannot be read: ${(e as Error).message}`);
  }
  const roots = nodes.filter(isElement);
  if (roots.length !== 1 || tagOf(roots[0]!) !== "domain") throw new InputError(`${what}: the root element is not <domain>`);
  try {
    return { text, domain: zip(roots[0]!, span) };
  } catch (e) {
    throw new InputError(`${what}: cannot be read: ${(e as Error).message}`);
  }
}

export function parseDomainXml(text: string, what = "domain XML"): DomainXml {
  if (text.length > MAX_XML) throw new InputError(`${what}: larger than ${MAX_XML} bytes`);
  if (/<!DOCTYPE|<!ENTITY/i.test(text)) throw new InputError(`${what}: DOCTYPE and entity declarations are not allowed`);
  const valid = XMLValidator.validate(text);
  if (valid !== true) throw new InputError(`${what}: not well-formed XML at line ${valid.err.line}: ${valid.err.msg}`);
  return read(text, what);
}

export function serializeDomainXml(doc: DomainXml): string {
  return doc.text;
}

function child(parent: DomainElement, name: string): DomainElement | undefined {
  return parent.children.find((c) => c.name === name);
}

const prefixOf = (name: string) => (name.includes(":") ? name.slice(0, name.indexOf(":")) : "");
const localName = (name: string) => name.slice(name.indexOf(":") + 1);

export function domainName(doc: DomainXml): string | undefined {
  return child(doc.domain, "name")?.text || undefined;
}

/** The domain's own `<uuid>`: with its name, what identifies a domain in its XML. */
export function domainUuid(doc: DomainXml): string | undefined {
  return child(doc.domain, "uuid")?.text.trim() || undefined;
}

/** libvirt reads only the first `<metadata>`, and in it the first element of each namespace. */
function ourContainer(doc: DomainXml): DomainElement | undefined {
  const metadata = child(doc.domain, "metadata");
  return metadata?.children.find((el) => {
    const prefix = prefixOf(el.name);
    return el.attributes[prefix ? `xmlns:${prefix}` : "xmlns"] === XMLNS;
  });
}

export function hasRoutedMetadata(doc: DomainXml): boolean {
  return ourContainer(doc) !== undefined;
}

export function routedInterfaces(doc: DomainXml): RoutedInterface[] {
  return (ourContainer(doc)?.children ?? []).filter((el) => localName(el.name) === "interface").map(({ attributes: a }) => ({
    network: a.network ?? "", ip: a.ip ?? "", ...(a.ip6 ? { ip6: a.ip6 } : {}), mac: a.mac ?? "", tap: a.tap ?? "",
  }));
}

/** Every `<interface>` the domain has (libvirt reads ./devices/interface). */
function interfaceElements(doc: DomainXml): DomainElement[] {
  return doc.domain.children.filter((c) => c.name === "devices").flatMap((d) => d.children.filter((c) => c.name === "interface"));
}

const targetDev = (el: DomainElement) => child(el, "target")?.attributes.dev;

/** The device vmrouted added for `i`, recognised by all of type, tap and MAC: never someone else's. */
function isOurDevice(el: DomainElement, i: RoutedInterface): boolean {
  return el.attributes.type === "ethernet" && targetDev(el) === i.tap
    && child(el, "mac")?.attributes.address?.toLowerCase() === i.mac.toLowerCase();
}

// ---- fragments ----------------------------------------------------------------

function node(tag: string, attributes: Record<string, string>, kids: XmlNode[] = []): XmlNode {
  const n: XmlNode = { [tag]: kids };
  if (Object.keys(attributes).length) n[":@"] = Object.fromEntries(Object.entries(attributes).map(([k, v]) => [`@_${k}`, v]));
  return n;
}

/**
 * The `<interface type='ethernet'>` libvirt needs for a pre-created tap
 * (managed='no': libvirt must not create or delete it). No `<script>`: libvirt's
 * schema refuses an empty path, and without one libvirt runs none.
 */
function interfaceNode(i: RoutedInterface): XmlNode {
  return node("interface", { type: "ethernet" }, [
    node("mac", { address: i.mac }),
    node("target", { dev: i.tap, managed: "no" }),
    node("model", { type: "virtio" }),
  ]);
}

function entryNode(i: RoutedInterface, prefix: string): XmlNode {
  return node(prefix ? `${prefix}:interface` : "interface", { network: i.network, ip: i.ip, ...(i.ip6 ? { ip6: i.ip6 } : {}), mac: i.mac, tap: i.tap });
}

function containerNode(entries: XmlNode[]): XmlNode {
  return node(`${XMLNS_PREFIX}:interfaces`, { [`xmlns:${XMLNS_PREFIX}`]: XMLNS }, entries);
}

/** The element rendered as libvirt formats its own output, indented where it goes. */
function rendered(n: XmlNode): Render {
  return (indent, unit, newline) => {
    const built = new XMLBuilder({ ...BUILD_OPTIONS, format: true, indentBy: unit }).build([n]) as string;
    return built.replace(/^\n+|\n+$/g, "").split("\n").join(newline + indent);
  };
}

/** The device XML, for `virsh attach-device`. */
export function interfaceXml(i: RoutedInterface): string {
  return rendered(interfaceNode(i))("", "  ", "\n");
}

/**
 * The metadata element alone, for `virsh metadata --set`: unqualified, because
 * libvirt puts it into the namespace given with --uri/--key itself (and
 * refuses an element that declares one).
 */
export function metadataXml(list: RoutedInterface[]): string {
  return new XMLBuilder(BUILD_OPTIONS).build([node("interfaces", {}, list.map((i) => entryNode(i, "")))]) as string;
}

// ---- patching -----------------------------------------------------------------

/** Edited text, read again (every position after the edit has moved). */
const reread = (text: string) => read(text, "patched domain XML");

/** Our `<interface>` after the domain's last interface (or last device); a `<devices>` made for it where there is none. */
function withDevice(doc: DomainXml, iface: RoutedInterface): DomainXml {
  const devices = child(doc.domain, "devices");
  if (!devices) return reread(insertElement(doc.text, doc.domain, rendered(node("devices", {}, [interfaceNode(iface)])), doc.domain.children.at(-1)));
  const last = devices.children.filter((c) => c.name === "interface").at(-1) ?? devices.children.at(-1);
  return reread(insertElement(doc.text, devices, rendered(interfaceNode(iface)), last));
}

/** Our entry, in our element, in the domain's `<metadata>`: each made where missing. */
function withEntry(doc: DomainXml, iface: RoutedInterface): DomainXml {
  const ours = ourContainer(doc);
  if (ours) return reread(insertElement(doc.text, ours, rendered(entryNode(iface, prefixOf(ours.name))), ours.children.at(-1)));
  const container = containerNode([entryNode(iface, XMLNS_PREFIX)]);
  const metadata = child(doc.domain, "metadata");
  if (metadata) return reread(insertElement(doc.text, metadata, rendered(container), metadata.children.at(-1)));
  // Where libvirt itself puts <metadata>: after name, uuid, genid, title, description.
  const head = doc.domain.children.filter((c) => ["name", "uuid", "genid", "title", "description"].includes(c.name)).at(-1);
  return reread(insertElement(doc.text, doc.domain, rendered(node("metadata", {}, [container])), head));
}

/**
 * Adds the interface and records it in our metadata, inside the domain's one
 * `<metadata>` (libvirt keeps only the first: a second would lose every other
 * application's entries; an empty `<metadata/>`, which libvirt keeps as it is,
 * is filled and later given back as it was). Refuses a tap or IP that is
 * already there, and a device with our tap's name that is not ours.
 */
export function addRoutedInterface(doc: DomainXml, iface: RoutedInterface): void {
  for (const [key, value] of Object.entries(iface))
    if (/[\u0000-\u001f\u007f]/.test(value)) throw new InputError(`routed interface ${key} contains control characters`);
  if (routedInterfaces(doc).some((i) => i.ip === iface.ip || i.tap === iface.tap))
    throw new InputError(`domain already has a routed interface for ${iface.ip}`);
  if (interfaceElements(doc).some((el) => targetDev(el) === iface.tap))
    throw new InputError(`domain already has an interface with target dev ${iface.tap} that vmrouted does not manage`);
  Object.assign(doc, withEntry(withDevice(doc, iface), iface)); // all or nothing
}

/** Without our device for `iface`, if it is there (the first that is exactly ours, nothing else). */
function withoutDevice(doc: DomainXml, iface: RoutedInterface): DomainXml {
  for (const devices of doc.domain.children.filter((c) => c.name === "devices")) {
    const device = devices.children.find((el) => el.name === "interface" && isOurDevice(el, iface));
    if (device) return reread(removeElement(doc.text, [doc.domain, devices, device]));
  }
  return doc;
}

function withoutEntry(doc: DomainXml, ip: string): DomainXml {
  const metadata = child(doc.domain, "metadata")!;
  const ours = ourContainer(doc)!;
  const entry = ours.children.find((el) => localName(el.name) === "interface" && el.attributes.ip === ip)!;
  return reread(removeElement(doc.text, [doc.domain, metadata, ours, entry]));
}

/** Exact inverse of addRoutedInterface: takes out what it put in, and only that. */
export function removeRoutedInterface(doc: DomainXml, ip: string): RoutedInterface {
  const iface = routedInterfaces(doc).find((i) => i.ip === ip);
  if (!iface) throw new InputError(`domain has no routed interface with ip ${ip}`);
  Object.assign(doc, withoutEntry(withoutDevice(doc, iface), ip)); // all or nothing
  return iface;
}
