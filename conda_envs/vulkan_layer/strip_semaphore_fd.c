/*
 * VK_LAYER_MBDPO_strip_semaphore_fd: a Vulkan layer that removes the device extension
 * VK_KHR_external_semaphore_fd from vkCreateDevice and passes everything else through.
 *
 * Why: SAPIEN 2.2.2 (ManiSkill2 0.5.3) always asks for VK_KHR_external_semaphore_fd when it
 * creates its device (it is only used to share GPU work with CUDA), and lavapipe, Mesa's
 * software Vulkan driver, does not have it, so device creation fails with
 * VK_ERROR_EXTENSION_NOT_PRESENT on a machine without a GPU. Nothing on the CPU path calls
 * the extension's function (vkGetSemaphoreFdKHR), so dropping it from the list is enough.
 * The layer's manifest (VkLayer_MBDPO_strip_semaphore_fd.json) lists the extension under
 * "device_extensions": the loader checks every requested device extension against the
 * driver's and the enabled layers' lists before it calls vkCreateDevice down the chain, and
 * would otherwise refuse it before this layer sees the call.
 *
 * Build (scripts/setup_maniskill2.sh does this):
 *   gcc -shared -fPIC -O2 -fvisibility=hidden -o libVkLayer_MBDPO_strip_semaphore_fd.so \
 *       strip_semaphore_fd.c
 * and put VkLayer_MBDPO_strip_semaphore_fd.json beside the .so; enable it with
 *   VK_LAYER_PATH=<that folder> VK_INSTANCE_LAYERS=VK_LAYER_MBDPO_strip_semaphore_fd
 * Set MBDPO_VK_LAYER_DEBUG=1 to print a line to stderr for each extension removed.
 *
 * Uses only the loader-layer interface of vulkan/vk_layer.h (Debian: libvulkan-dev), version
 * 2 (vkNegotiateLoaderLayerInterfaceVersion), so it works with loaders from 1.1.70 on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vulkan/vk_layer.h>
#include <vulkan/vulkan.h>

#define EXPORT __attribute__((visibility("default")))

static const char *const STRIPPED[] = {"VK_KHR_external_semaphore_fd"};

/* The next link of the chain. The loader gives the same functions for every instance and
 * device of a process with the same layer list, and they dispatch on their first argument,
 * so one global copy of each is enough (no per-instance state is kept). */
static PFN_vkGetInstanceProcAddr next_gipa = NULL;
static PFN_vkGetDeviceProcAddr next_gdpa = NULL;

static int is_stripped(const char *name) {
    for (size_t i = 0; i < sizeof(STRIPPED) / sizeof(STRIPPED[0]); ++i)
        if (strcmp(name, STRIPPED[i]) == 0) return 1;
    return 0;
}

static VkLayerInstanceCreateInfo *instance_link(const VkInstanceCreateInfo *info) {
    VkLayerInstanceCreateInfo *p = (VkLayerInstanceCreateInfo *)info->pNext;
    while (p && !(p->sType == VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO &&
                  p->function == VK_LAYER_LINK_INFO))
        p = (VkLayerInstanceCreateInfo *)p->pNext;
    return p;
}

static VkLayerDeviceCreateInfo *device_link(const VkDeviceCreateInfo *info) {
    VkLayerDeviceCreateInfo *p = (VkLayerDeviceCreateInfo *)info->pNext;
    while (p && !(p->sType == VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO &&
                  p->function == VK_LAYER_LINK_INFO))
        p = (VkLayerDeviceCreateInfo *)p->pNext;
    return p;
}

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateInstance(
    const VkInstanceCreateInfo *info, const VkAllocationCallbacks *alloc, VkInstance *instance) {
    VkLayerInstanceCreateInfo *link = instance_link(info);
    if (!link || !link->u.pLayerInfo) return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext; /* the next layer sees its own link */
    PFN_vkCreateInstance create = (PFN_vkCreateInstance)gipa(VK_NULL_HANDLE, "vkCreateInstance");
    if (!create) return VK_ERROR_INITIALIZATION_FAILED;
    next_gipa = gipa;
    return create(info, alloc, instance);
}

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateDevice(
    VkPhysicalDevice physical, const VkDeviceCreateInfo *info,
    const VkAllocationCallbacks *alloc, VkDevice *device) {
    VkLayerDeviceCreateInfo *link = device_link(info);
    if (!link || !link->u.pLayerInfo) return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    PFN_vkGetDeviceProcAddr gdpa = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;
    PFN_vkCreateDevice create = (PFN_vkCreateDevice)gipa(VK_NULL_HANDLE, "vkCreateDevice");
    if (!create) return VK_ERROR_INITIALIZATION_FAILED;
    next_gdpa = gdpa;

    /* A copy of the create info without the stripped extensions. */
    uint32_t n = info->enabledExtensionCount, kept = 0;
    const char **names = (const char **)malloc((n ? n : 1) * sizeof(char *));
    if (!names) return VK_ERROR_OUT_OF_HOST_MEMORY;
    for (uint32_t i = 0; i < n; ++i) {
        if (is_stripped(info->ppEnabledExtensionNames[i])) {
            if (getenv("MBDPO_VK_LAYER_DEBUG"))
                fprintf(stderr, "VK_LAYER_MBDPO_strip_semaphore_fd: removed %s\n",
                        info->ppEnabledExtensionNames[i]);
            continue;
        }
        names[kept++] = info->ppEnabledExtensionNames[i];
    }
    VkDeviceCreateInfo copy = *info;
    copy.enabledExtensionCount = kept;
    copy.ppEnabledExtensionNames = kept ? names : NULL;
    VkResult result = create(physical, &copy, alloc, device);
    free(names);
    return result;
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL layer_GetDeviceProcAddr(VkDevice device,
                                                                        const char *name);

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL layer_GetInstanceProcAddr(VkInstance instance,
                                                                          const char *name) {
    if (strcmp(name, "vkGetInstanceProcAddr") == 0)
        return (PFN_vkVoidFunction)layer_GetInstanceProcAddr;
    if (strcmp(name, "vkCreateInstance") == 0) return (PFN_vkVoidFunction)layer_CreateInstance;
    if (strcmp(name, "vkCreateDevice") == 0) return (PFN_vkVoidFunction)layer_CreateDevice;
    if (strcmp(name, "vkGetDeviceProcAddr") == 0)
        return (PFN_vkVoidFunction)layer_GetDeviceProcAddr;
    return next_gipa ? next_gipa(instance, name) : NULL;
}

static VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL layer_GetDeviceProcAddr(VkDevice device,
                                                                        const char *name) {
    if (strcmp(name, "vkGetDeviceProcAddr") == 0)
        return (PFN_vkVoidFunction)layer_GetDeviceProcAddr;
    return next_gdpa ? next_gdpa(device, name) : NULL;
}

EXPORT VKAPI_ATTR VkResult VKAPI_CALL
vkNegotiateLoaderLayerInterfaceVersion(VkNegotiateLayerInterface *iface) {
    if (!iface || iface->sType != LAYER_NEGOTIATE_INTERFACE_STRUCT)
        return VK_ERROR_INITIALIZATION_FAILED;
    if (iface->loaderLayerInterfaceVersion > 2) iface->loaderLayerInterfaceVersion = 2;
    if (iface->loaderLayerInterfaceVersion >= 2) {
        iface->pfnGetInstanceProcAddr = layer_GetInstanceProcAddr;
        iface->pfnGetDeviceProcAddr = layer_GetDeviceProcAddr;
        iface->pfnGetPhysicalDeviceProcAddr = NULL;
    }
    return VK_SUCCESS;
}

/* Older loaders look the entry points up by these names. */
EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetInstanceProcAddr(VkInstance instance,
                                                                      const char *name) {
    return layer_GetInstanceProcAddr(instance, name);
}

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetDeviceProcAddr(VkDevice device,
                                                                    const char *name) {
    return layer_GetDeviceProcAddr(device, name);
}
