import { XMLBuilder, XMLParser, XMLValidator } from "fast-xml-parser";
import { InputError } from "../model/errors.js";

// libvirt domain XML, patched without disturbing anything else: element order,
// attributes, comments, CDATA and text are kept as they are (values are never
// parsed, entities never expanded). Domain XML from a hook is untrusted input:
// DTDs and entity declarations are refused outright, and so is anything large.

export const XMLNS = "https://vmrouted.dev/xmlns/interfaces/1";
export const XMLNS_PREFIX = "vmrouted";
const MAX_XML = 1024 * 1024;

const OPTIONS = {
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

/** One node of fast-xml-parser's order-preserving tree: `{ tag: children, ":@": attributes }`. */
type XmlNode = Record<string, unknown> & { ":@"?: Record<string, string> };

export interface RoutedInterface {
  network: string;
  ip: string;
  /** Guest MAC. */
  mac: string;
  tap: string;
}

export interface DomainXml {
  nodes: XmlNode[];
}

function tagOf(node: XmlNode): string | undefined {
  return Object.keys(node).find((k) => k !== ":@");
}

function children(node: XmlNode): XmlNode[] {
  const tag = tagOf(node);
  return tag ? ((node[tag] as XmlNode[] | undefined) ?? []) : [];
}

function attr(node: XmlNode, name: string): string | undefined {
  return node[":@"]?.[`@_${name}`];
}

function element(tag: string, attributes: Record<string, string>, kids: XmlNode[] = []): XmlNode {
  const node: XmlNode = { [tag]: kids };
  if (Object.keys(attributes).length) node[":@"] = Object.fromEntries(Object.entries(attributes).map(([k, v]) => [`@_${k}`, v]));
  return node;
}

export function parseDomainXml(text: string, what = "domain XML"): DomainXml {
  if (text.length > MAX_XML) throw new InputError(`${what}: larger than ${MAX_XML} bytes`);
  if (/<!DOCTYPE|<!ENTITY/i.test(text)) throw new InputError(`${what}: DOCTYPE and entity declarations are not allowed`);
  const valid = XMLValidator.validate(text);
  if (valid !== true) throw new InputError(`${what}: not well-formed XML at line ${valid.err.line}: ${valid.err.msg}`);
  const nodes = new XMLParser(OPTIONS).parse(text) as XmlNode[];
  const roots = nodes.filter((n) => { const t = tagOf(n); return t !== undefined && !t.startsWith("?") && t !== "#comment" && t !== "#text"; });
  if (roots.length !== 1 || tagOf(roots[0]!) !== "domain") throw new InputError(`${what}: the root element is not <domain>`);
  return { nodes };
}

export function serializeDomainXml(doc: DomainXml): string {
  return new XMLBuilder({ ...OPTIONS, suppressEmptyNode: true }).build(doc.nodes) as string;
}

function domainNode(doc: DomainXml): XmlNode {
  return doc.nodes.find((n) => tagOf(n) === "domain")!;
}

function child(parent: XmlNode, tag: string): XmlNode | undefined {
  return children(parent).find((n) => tagOf(n) === tag);
}

/** Finds or creates `<tag>` (appended) under parent. */
function ensureChild(parent: XmlNode, tag: string): XmlNode {
  const found = child(parent, tag);
  if (found) return found;
  const node = element(tag, {});
  (parent[tagOf(parent)!] as XmlNode[]).push(node);
  return node;
}

export function domainName(doc: DomainXml): string | undefined {
  const name = child(domainNode(doc), "name");
  const text = name ? children(name).find((n) => "#text" in n)?.["#text"] : undefined;
  return typeof text === "string" ? text : undefined;
}

/** Our metadata element, whatever prefix libvirt gave our namespace. */
function ourMetadata(doc: DomainXml): { metadata: XmlNode; element: XmlNode; prefix: string } | undefined {
  const metadata = child(domainNode(doc), "metadata");
  if (!metadata) return undefined;
  for (const el of children(metadata)) {
    const tag = tagOf(el);
    if (!tag || tag.startsWith("#")) continue;
    const prefix = tag.includes(":") ? tag.split(":")[0]! : "";
    if (attr(el, prefix ? `xmlns:${prefix}` : "xmlns") === XMLNS) return { metadata, element: el, prefix };
  }
  return undefined;
}

export function hasRoutedMetadata(doc: DomainXml): boolean {
  return ourMetadata(doc) !== undefined;
}

export function routedInterfaces(doc: DomainXml): RoutedInterface[] {
  const ours = ourMetadata(doc);
  if (!ours) return [];
  const want = ours.prefix ? `${ours.prefix}:interface` : "interface";
  return children(ours.element).filter((n) => tagOf(n) === want).map((n) => ({
    network: attr(n, "network") ?? "", ip: attr(n, "ip") ?? "", mac: attr(n, "mac") ?? "", tap: attr(n, "tap") ?? "",
  }));
}

/** The `<interface type='ethernet'>` libvirt needs for a pre-created tap (managed='no': libvirt must not create or delete it). */
export function interfaceElement(i: RoutedInterface): XmlNode {
  return element("interface", { type: "ethernet" }, [
    element("mac", { address: i.mac }),
    element("script", { path: "" }),
    element("target", { dev: i.tap, managed: "no" }),
    element("model", { type: "virtio" }),
  ]);
}

export function interfaceXml(i: RoutedInterface): string {
  return new XMLBuilder({ ...OPTIONS, suppressEmptyNode: true, format: true }).build([interfaceElement(i)]) as string;
}

function metadataElement(list: RoutedInterface[]): XmlNode {
  return element(`${XMLNS_PREFIX}:interfaces`, { [`xmlns:${XMLNS_PREFIX}`]: XMLNS },
    list.map((i) => element(`${XMLNS_PREFIX}:interface`, { network: i.network, ip: i.ip, mac: i.mac, tap: i.tap })));
}

/**
 * The metadata element alone, for `virsh metadata --set`: unqualified, because
 * libvirt puts it into the namespace given with --uri/--key itself (and
 * refuses an element that declares one).
 */
export function metadataXml(list: RoutedInterface[]): string {
  const bare = element("interfaces", {}, list.map((i) => element("interface", { network: i.network, ip: i.ip, mac: i.mac, tap: i.tap })));
  return new XMLBuilder({ ...OPTIONS, suppressEmptyNode: true }).build([bare]) as string;
}

function isOurInterface(node: XmlNode, tap: string): boolean {
  if (tagOf(node) !== "interface" || attr(node, "type") !== "ethernet") return false;
  return children(node).some((c) => tagOf(c) === "target" && attr(c, "dev") === tap);
}

function setMetadata(doc: DomainXml, list: RoutedInterface[]): void {
  const ours = ourMetadata(doc);
  if (ours) {
    const kids = ours.metadata.metadata as XmlNode[];
    const at = kids.indexOf(ours.element);
    if (list.length) kids[at] = metadataElement(list);
    else kids.splice(at, 1);
    if (kids.filter((k) => tagOf(k) !== "#text").length === 0) {
      const top = domainNode(doc).domain as XmlNode[];
      top.splice(top.indexOf(ours.metadata), 1);
    }
    return;
  }
  if (!list.length) return;
  // libvirt's own order puts <metadata> right after name/uuid/title/description.
  const top = domainNode(doc).domain as XmlNode[];
  const after = ["name", "uuid", "genid", "title", "description"];
  let at = 0;
  top.forEach((n, i) => { if (after.includes(tagOf(n) ?? "")) at = i + 1; });
  top.splice(at, 0, element("metadata", {}, [metadataElement(list)]));
}

/** Adds the interface and records it in our metadata. Refuses a tap or IP that is already there. */
export function addRoutedInterface(doc: DomainXml, iface: RoutedInterface): void {
  const existing = routedInterfaces(doc);
  if (existing.some((i) => i.ip === iface.ip || i.tap === iface.tap)) throw new InputError(`domain already has a routed interface for ${iface.ip}`);
  const devices = ensureChild(domainNode(doc), "devices");
  const kids = devices.devices as XmlNode[];
  const lastInterface = kids.map((n) => tagOf(n)).lastIndexOf("interface");
  kids.splice(lastInterface >= 0 ? lastInterface + 1 : kids.length, 0, interfaceElement(iface));
  setMetadata(doc, [...existing, iface]);
}

/** Exact inverse of addRoutedInterface. */
export function removeRoutedInterface(doc: DomainXml, ip: string): RoutedInterface {
  const existing = routedInterfaces(doc);
  const iface = existing.find((i) => i.ip === ip);
  if (!iface) throw new InputError(`domain has no routed interface with ip ${ip}`);
  const devices = child(domainNode(doc), "devices");
  if (devices) {
    const kids = devices.devices as XmlNode[];
    const at = kids.findIndex((n) => isOurInterface(n, iface.tap));
    if (at >= 0) kids.splice(at, 1);
    // We created <devices> for a domain that had none; libvirt never writes an empty one.
    if (kids.length === 0) {
      const top = domainNode(doc).domain as XmlNode[];
      top.splice(top.indexOf(devices), 1);
    }
  }
  setMetadata(doc, existing.filter((i) => i.ip !== ip));
  return iface;
}
