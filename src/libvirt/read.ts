import { domainName, domainUuid, parseDomainXml, routedInterfaces } from "./domain-xml.js";
import type { ListedDomain } from "./domains.js";
import type { Virsh } from "./virsh.js";

/**
 * Every domain libvirt has, each identified by the name and uuid in its own
 * XML (never by its position in a listing). A domain whose XML cannot be read
 * is reported on its own and disturbs no other. Throws when libvirt cannot be reached.
 */
export async function readDomains(virsh: Virsh): Promise<{ listed: ListedDomain[]; unreadable: Array<{ uuid: string; error: string }> }> {
  const listing = await virsh.list();
  const xmls = await virsh.dumpAll(listing);
  const listed: ListedDomain[] = [];
  const unreadable: Array<{ uuid: string; error: string }> = [];
  for (const l of listing) {
    const text = xmls.get(l.uuid);
    if (text === undefined) {
      unreadable.push({ uuid: l.uuid, error: "virsh dumpxml failed (undefined meanwhile?)" });
      continue;
    }
    try {
      const doc = parseDomainXml(text, "libvirt domain XML");
      const name = domainName(doc);
      if (!name || domainUuid(doc) !== l.uuid) throw new Error(`the XML read for ${l.uuid} is not that domain's`);
      listed.push({ name, uuid: l.uuid, active: l.active, interfaces: routedInterfaces(doc) });
    } catch (e) {
      unreadable.push({ uuid: l.uuid, error: (e as Error).message });
    }
  }
  return { listed, unreadable };
}
