// SPDX-License-Identifier: GPL-3.0-or-later
pragma solidity 0.6.12;

/// @title Jami name registrar
/// @notice Maps 32-byte names to an owner, a Jami address and the key material that
/// proves the registration. Speaks the ABI of the public Jami chain's registrar.
contract Registrar {
    struct Record {
        address owner;
        address addr;
        address subRegistrar;
        bytes32 content;
        string publickey;
        string signature;
    }

    mapping(bytes32 => Record) private records;
    // Primary (reverse) name of an address.
    mapping(address => bytes32) private reverse;

    event Changed(bytes32 indexed name);
    event PrimaryChanged(bytes32 indexed name, address indexed addr, address owner);

    modifier onlyOwner(bytes32 name) {
        address recordOwner = records[name].owner;
        require(recordOwner != address(0) && msg.sender == recordOwner, "not the owner");
        _;
    }

    function reserve(bytes32 name, address a) external {
        reserveFor(name, msg.sender, a, "", "");
    }

    /// @notice Registers `name` for `owner` pointing at `a`.
    /// @dev Never reverts on a refused registration: callers tell success from the events
    /// or the state after the block, like with the original Jami registrar.
    function reserveFor(
        bytes32 name,
        address owner,
        address a,
        string memory publickey,
        string memory signedname
    ) public {
        if (name == bytes32(0) || (owner == address(0) && a == address(0))) return;
        Record storage record = records[name];
        // The server often passes a zero owner, so a name held only by its addr is taken too.
        if (record.owner != address(0) || record.addr != address(0)) return;
        if (a != address(0) && reverse[a] != bytes32(0)) return;

        record.owner = owner;
        record.addr = a;
        // Skip the length-slot write for empty strings: it would store a zero anyway.
        if (bytes(publickey).length != 0) record.publickey = publickey;
        if (bytes(signedname).length != 0) record.signature = signedname;
        if (a != address(0)) {
            reverse[a] = name;
            emit PrimaryChanged(name, a, owner);
        }
        emit Changed(name);
    }

    function transfer(bytes32 name, address newOwner) external onlyOwner(name) {
        records[name].owner = newOwner;
        emit Changed(name);
    }

    /// @notice Frees `name`: the record and its primary-name entry are deleted.
    function disown(bytes32 name) external onlyOwner(name) {
        Record storage record = records[name];
        address a = record.addr;
        if (a != address(0) && reverse[a] == name) delete reverse[a];
        // `delete` on a struct also clears the strings' data slots (gas refunds).
        delete records[name];
        emit Changed(name);
    }

    function setAddress(bytes32 name, address a, bool primary) external onlyOwner(name) {
        Record storage record = records[name];
        address oldAddr = record.addr;
        if (oldAddr != address(0) && reverse[oldAddr] == name) delete reverse[oldAddr];
        record.addr = a;
        if (primary && a != address(0)) {
            bytes32 current = reverse[a];
            require(current == bytes32(0) || current == name, "address has another name");
            reverse[a] = name;
            emit PrimaryChanged(name, a, record.owner);
        }
        emit Changed(name);
    }

    function setSubRegistrar(bytes32 name, address registrar) external onlyOwner(name) {
        records[name].subRegistrar = registrar;
        emit Changed(name);
    }

    function setContent(bytes32 name, bytes32 content) external onlyOwner(name) {
        records[name].content = content;
        emit Changed(name);
    }

    function owner(bytes32 name) external view returns (address) {
        return records[name].owner;
    }

    function addr(bytes32 name) external view returns (address) {
        return records[name].addr;
    }

    function subRegistrar(bytes32 name) external view returns (address) {
        return records[name].subRegistrar;
    }

    function content(bytes32 name) external view returns (bytes32) {
        return records[name].content;
    }

    function name(address a) external view returns (bytes32) {
        return reverse[a];
    }

    function publickey(bytes32 name) external view returns (string memory) {
        return records[name].publickey;
    }

    function signature(bytes32 name) external view returns (string memory) {
        return records[name].signature;
    }
}
